"""Perplexity of a model over a text: exp(mean negative log-likelihood of each predicted token).

The token stream (with BOS first when the model adds one to raw prompts) is cut into
non-overlapping windows of `ctx` tokens. Each window starts from an empty context: its first
token is given, every later token is predicted from those before it, and a window's loss is what
Hugging Face reports for `model(window, labels=window)`. Windows are not overlapped or strided, so
tokens early in a window see little context; the figure is comparable only between runs with the
same `ctx` (llama.cpp's `llama-perplexity`, which scores only the second half of each window, gives
lower numbers). A final window of fewer than two tokens predicts nothing and is dropped.

`kl_compare` scores the same windows with two models of one file (the path under test and the
float32 reference) and measures how far apart their next-token distributions are: the KL
divergence KL(reference || model) at every predicted position, summarized as mean, 99th
percentile and maximum, and top-1 agreement (the share of positions where both models' most
likely token is the same). These are the figures llama.cpp's `llama-perplexity --kl-divergence`
reports to compare quantizations, though its numbers come from different windows (see above).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UsageError
from .generation import PREFILL_CHUNK
from .kv_cache import KVCache
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
        raise UsageError.naming(f"{{ctx}} must be at least 2 for perplexity, got {ctx}")
    cut = [list(ids[i : i + ctx]) for i in range(0, len(ids), ctx)]
    return [w for w in cut if len(w) >= 2]


def window_logits(cache: KVCache, ids: Sequence[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits (T, vocab) float32, targets (T,)) for every position of ids[:-1], written into row 0 of
    `cache` from position 0, in chunks of PREFILL_CHUNK positions: the logits of a whole window (T x vocab
    floats) may not fit in memory, and a cache-free pass would hold attention scores of T x T."""
    cache.ensure(1, len(ids))
    device = cache.model.device
    for start in range(0, len(ids) - 1, PREFILL_CHUNK):
        stop = min(start + PREFILL_CHUNK, len(ids) - 1)
        with torch.inference_mode():  # not held across the yield: two of these run interleaved in kl_compare
            logits = cache.run([ids[start:stop]], start)[0].float()  # (T, vocab)
        yield logits, torch.tensor(ids[start + 1 : stop + 1], device=device)  # the token after each position


def window_nll(cache: KVCache, ids: Sequence[int]) -> float:
    """Summed negative log-likelihood of ids[1:] given the tokens before each (row 0 of `cache`, from position 0)."""
    return sum(F.cross_entropy(logits, targets, reduction="sum").item() for logits, targets in window_logits(cache, ids))


def perplexity(
    model: Transformer, ids: Sequence[int], ctx: int, *, progress: Callable[[int, int, float], None] | None = None
) -> PerplexityResult:
    """Perplexity of `ids` in windows of `ctx`; `progress(done, total, running perplexity)` after each window."""
    parts = windows(ids, ctx)
    if not parts:
        raise UsageError(f"the text has {len(ids)} token(s): perplexity needs at least two")
    started = time.perf_counter()
    nll, predicted = 0.0, 0
    cache = KVCache(model)
    for i, part in enumerate(parts):
        nll += window_nll(cache, part)
        predicted += len(part) - 1
        if progress is not None:
            progress(i + 1, len(parts), math.exp(nll / predicted))
    return PerplexityResult(nll, predicted, len(ids), len(parts), ctx, time.perf_counter() - started)


# ---------------------------------------------------------------- KL divergence against a reference


def kl_divergence(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) in nats for each row, where P = softmax(reference) and Q = softmax(logits): (..., vocab) -> (...).

    Computed in float32 from log-probabilities; tiny negative values from rounding are clamped to 0."""
    log_p = F.log_softmax(reference.float(), dim=-1)
    log_q = F.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def kl_summary(kl: torch.Tensor) -> dict[str, float]:
    """Mean, 99th percentile (linear interpolation between positions) and maximum of per-position KL values."""
    values = kl.double().flatten()
    return {"mean": values.mean().item(), "p99": torch.quantile(values, 0.99).item(), "max": values.max().item()}


def top1_matches(reference: torch.Tensor, logits: torch.Tensor) -> int:
    """Rows where both distributions put their highest probability on the same token."""
    return int((reference.argmax(-1) == logits.argmax(-1)).sum().item())


@dataclass(frozen=True)
class KLResult:
    """A model scored against a reference on the same windows."""

    result: PerplexityResult  # the model under test
    reference: PerplexityResult
    kl: torch.Tensor  # (positions,) KL(reference || model) at each predicted position
    top1: int  # positions where both models' argmax agree

    @property
    def positions(self) -> int:
        return self.kl.numel()

    @property
    def top1_agreement(self) -> float:
        return self.top1 / self.positions

    def as_dict(self) -> dict[str, float | int]:
        summary = kl_summary(self.kl)
        return {
            **self.result.as_dict(), "reference_perplexity": round(self.reference.perplexity, 6),
            "kl_mean": round(summary["mean"], 9), "kl_p99": round(summary["p99"], 9), "kl_max": round(summary["max"], 9),
            "top1_agreement": round(self.top1_agreement, 6), "positions": self.positions,
        }  # fmt: skip


def kl_compare(
    model: Transformer,
    reference: Transformer,
    ids: Sequence[int],
    ctx: int,
    *,
    progress: Callable[[int, int, float, float], None] | None = None,
) -> KLResult:
    """Score `ids` in windows of `ctx` with both models, chunk by chunk side by side (the logits of the
    whole text are never held); `progress(done, total, perplexity so far, mean KL so far)` after each window."""
    parts = windows(ids, ctx)
    if not parts:
        raise UsageError(f"the text has {len(ids)} token(s): perplexity needs at least two")
    started = time.perf_counter()
    nll, ref_nll, predicted, top1 = 0.0, 0.0, 0, 0
    kls: list[torch.Tensor] = []
    cache, ref_cache = KVCache(model), KVCache(reference)
    for i, part in enumerate(parts):
        for (logits, targets), (ref_logits, _) in zip(window_logits(cache, part), window_logits(ref_cache, part)):
            ref_logits = ref_logits.to(logits.device)
            nll += F.cross_entropy(logits, targets, reduction="sum").item()
            ref_nll += F.cross_entropy(ref_logits, targets, reduction="sum").item()
            kls.append(kl_divergence(ref_logits, logits).cpu())
            top1 += top1_matches(ref_logits, logits)
        predicted += len(part) - 1
        if progress is not None:
            progress(i + 1, len(parts), math.exp(nll / predicted), torch.cat(kls).double().mean().item())
    seconds = time.perf_counter() - started
    result = PerplexityResult(nll, predicted, len(ids), len(parts), ctx, seconds)
    return KLResult(result, PerplexityResult(ref_nll, predicted, len(ids), len(parts), ctx, seconds), torch.cat(kls), top1)
