"""Choosing the next token: pure functions over a logits vector.

Each filter takes logits (vocab,) and returns logits with the excluded tokens set to -inf; nothing
here keeps state. Randomness comes only from the `torch.Generator` passed in, so a seed reproduces
a run exactly. Temperature 0 means greedy (argmax) and ignores the other filters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .settings import SamplingSettings as SamplingSettings  # noqa: PLC0414 (re-exported: defined torch-free in settings.py)
from .settings import check_settings as check_settings  # noqa: PLC0414


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """Penalise tokens by how often they occurred; counts is (vocab,) occurrences so far."""
    seen = counts > 0
    out = logits.clone()
    if s.repetition_penalty != 1.0:
        penalised = torch.where(out > 0, out / s.repetition_penalty, out * s.repetition_penalty)
        out = torch.where(seen, penalised, out)
    out = out - counts.to(out.dtype) * s.frequency_penalty - seen.to(out.dtype) * s.presence_penalty
    return out


def repeated_ngram_tokens(tokens: Sequence[int], n: int) -> list[int]:
    """The tokens that would complete an n-token run already in `tokens` (transformers'
    no_repeat_ngram_size): each token that followed an earlier occurrence of the last n-1 tokens.
    Over the generated tokens only, so an answer may still quote its prompt; 0 = off."""
    if n < 1 or len(tokens) < n:
        return []
    tail = list(tokens[len(tokens) - n + 1 :]) if n > 1 else []
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if list(tokens[i : i + n - 1]) == tail]


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    # A token is dropped when the tokens before it already reach p; the top token always stays.
    drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least p times that of the most likely token."""
    if p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p * probs.max(), float("-inf"))


def sampling_distribution(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """The probabilities (vocab,) that `sample` draws from, after temperature and all filters."""
    scaled = logits.float() / s.temperature
    scaled = top_k_filter(scaled, s.top_k)
    scaled = top_p_filter(scaled, s.top_p)
    scaled = min_p_filter(scaled, s.min_p)
    return scaled.softmax(-1)


def sample(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator | None, counts: torch.Tensor | None = None) -> int:
    """One token id from logits (vocab,). `counts` (vocab,) feeds the penalties when they are on."""
    if counts is not None and s.uses_penalties:
        logits = apply_penalties(logits, counts, s)
    if s.greedy:
        return int(torch.argmax(logits))
    probs = sampling_distribution(logits, s)
    return int(torch.multinomial(probs, 1, generator=generator))
