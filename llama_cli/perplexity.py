"""Perplexity of a model over a text: exp(mean negative log-likelihood of each predicted token).

The token stream (with BOS first when the model adds one to raw prompts) is cut into
non-overlapping windows of `ctx` tokens. Each window starts from an empty context: its first
token is given, every later token is predicted from those before it, and a window's loss is what
Hugging Face reports for `model(window, labels=window)`. Windows are not overlapped or strided, so
tokens early in a window see little context; the figure is comparable only between runs with the
same `ctx` (llama.cpp's `llama-perplexity`, which scores only the second half of each window, gives
lower numbers). A final window of fewer than two tokens predicts nothing and is dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UsageError
from .generation import PREFILL_CHUNK
from .model import Transformer


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # summed negative log-likelihood (nats) of every predicted token
    predicted: int  # tokens predicted (each window's length minus one)
    tokens: int  # tokens in the text
    windows: int
    ctx: int
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.predicted)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "perplexity": round(self.perplexity, 6), "nll_per_token": round(self.nll / self.predicted, 6),
            "tokens": self.tokens, "predicted_tokens": self.predicted, "windows": self.windows, "ctx": self.ctx,
            "seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds else 0.0,
        }  # fmt: skip


def windows(ids: Sequence[int], ctx: int) -> list[list[int]]:
    """Non-overlapping windows of `ctx` tokens; a last one shorter than two tokens is dropped."""
    if ctx < 2:
        raise UsageError(f"--ctx must be at least 2 for perplexity, got {ctx}")
    cut = [list(ids[i : i + ctx]) for i in range(0, len(ids), ctx)]
    return [w for w in cut if len(w) >= 2]


def window_nll(model: Transformer, ids: Sequence[int]) -> float:
    """Summed negative log-likelihood of ids[1:] given the tokens before each, from an empty cache."""
    if model.max_batch < 1 or model.max_seq_len < len(ids):
        model.setup_cache(1, len(ids))
    device = model.tok_embeddings.weight.device
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, PREFILL_CHUNK):  # chunks bound the memory of the logits (T x vocab floats)
            stop = min(start + PREFILL_CHUNK, len(ids) - 1)
            logits = model(torch.tensor([ids[start:stop]], device=device), start)[0].float()  # (T, vocab)
            targets = torch.tensor(ids[start + 1 : stop + 1], device=device)  # the token after each position
            total += F.cross_entropy(logits, targets, reduction="sum").item()
    return total


def perplexity(
    model: Transformer, ids: Sequence[int], ctx: int, *, progress: Callable[[int, int, float], None] | None = None
) -> PerplexityResult:
    """Perplexity of `ids` in windows of `ctx`; `progress(done, total, running perplexity)` after each window."""
    parts = windows(ids, ctx)
    if not parts:
        raise UsageError(f"the text has {len(ids)} token(s): perplexity needs at least two")
    started = time.perf_counter()
    nll, predicted = 0.0, 0
    for i, part in enumerate(parts):
        nll += window_nll(model, part)
        predicted += len(part) - 1
        if progress is not None:
            progress(i + 1, len(parts), math.exp(nll / predicted))
    return PerplexityResult(nll, predicted, len(ids), len(parts), ctx, time.perf_counter() - started)
