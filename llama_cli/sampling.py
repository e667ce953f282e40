"""Choosing the next token: pure functions over logits.

Each filter takes logits (vocab,) and returns logits with the excluded tokens set to -inf; nothing
here keeps state. Randomness comes only from the `torch.Generator`s passed in, one per row, so a
seed reproduces a run exactly and a row's token never depends on the other rows of its batch.
Temperature 0 means greedy (argmax) and ignores the other filters.

With top-k on (the default, 40), a row is sampled among its k survivors only: one `topk` over the
vocabulary, then temperature, top-p and min-p over those k values (already sorted, so top-p needs
no sort of the vocabulary) and a k-way draw, for all rows of a step at once. Over the whole
vocabulary the same filters cost ~5 ms a row (a sort and a 49k-way multinomial), a quarter of a
batched decode step on the default model. With top-k off (0) every token stays a candidate and
the whole-vocabulary path below runs, one row at a time.
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
    return logits.masked_fill(probs < p * probs.amax(-1, keepdim=True), float("-inf"))  # per row of a batch


def sampling_distribution(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """The probabilities (vocab,) that `sample` draws from, after temperature and all filters."""
    scaled = logits.float() / s.temperature
    scaled = top_k_filter(scaled, s.top_k)
    scaled = top_p_filter(scaled, s.top_p)
    scaled = min_p_filter(scaled, s.min_p)
    return scaled.softmax(-1)


def survivor_distribution(values: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """The probabilities (rows, k) over each row's top-k logits `values` (rows, k), sorted most likely
    first: temperature, then top-p and min-p as `sampling_distribution` applies them to the vocabulary."""
    scaled = values.float() / s.temperature
    if s.top_p < 1.0:
        probs = scaled.softmax(-1)
        scaled = scaled.masked_fill((probs.cumsum(-1) - probs) >= s.top_p, float("-inf"))  # the rule of top_p_filter
    return min_p_filter(scaled, s.min_p).softmax(-1)


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One index per row of probs (rows, k) by inverse CDF; row i's uniform comes from generators[i] alone."""
    uniform = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])  # (rows,)
    cdf = probs.double().cumsum(-1)  # (rows, k)
    picked = (cdf <= (uniform * cdf[:, -1])[:, None]).sum(-1)  # the first index whose cdf passes the uniform's share
    return torch.minimum(picked, (probs > 0).sum(-1) - 1)  # rounding may reach the total: stay on a possible token


def sample_rows(
    logits: torch.Tensor, s: SamplingSettings, generators: Sequence[torch.Generator | None], counts: torch.Tensor | None = None
) -> list[int]:
    """One token id per row of logits (rows, vocab), every row under the same settings, row i drawing
    from generators[i]. `counts` (rows, vocab) feeds the penalties when they are on; they apply to
    the whole vocabulary before top-k, as they can move a token into or out of the k best."""
    if counts is not None and s.uses_penalties:
        logits = apply_penalties(logits, counts, s)
    if s.greedy:
        return torch.argmax(logits, dim=-1).tolist()
    if not 0 < s.top_k < logits.shape[-1]:  # every token a candidate: the whole-vocabulary distribution
        return [int(torch.multinomial(sampling_distribution(row, s), 1, generator=g)) for row, g in zip(logits, generators)]
    values, ids = torch.topk(logits.float(), s.top_k)  # (rows, k), most likely first
    chosen = draw(survivor_distribution(values, s), generators)  # (rows,)
    return ids.gather(-1, chosen[:, None])[:, 0].tolist()


def sample(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator | None, counts: torch.Tensor | None = None) -> int:
    """One token id from logits (vocab,). `counts` (vocab,) feeds the penalties when they are on."""
    return sample_rows(logits[None], s, [generator], None if counts is None else counts[None])[0]
