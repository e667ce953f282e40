"""Prompt-processing and generation speed of a loaded model, measured like llama.cpp's llama-bench.

- pp<N>: one prefill of an N-token prompt from an empty cache; tokens/s = N / prefill time.
- tg<N>: N tokens generated greedily after a one-token prompt (so the context stays short, as in
  llama-bench); tokens/s = (N - 1) / time from the first to the last token, sampling and
  detokenizing included (the first token comes out of the prefill).
Both go through `Generation`, the path every command uses. Each test runs once to warm up, then
`repeats` times; the figures are the median and the spread (min-max). Nothing is asserted: these
machines are shared, so compare runs made side by side, as ratios.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .generation import Generation, GenerationSettings
from .model import Transformer
from .sampling import SamplingSettings
from .tokenizer import Tokenizer

FILLER = (
    "The history of the city begins with a small settlement by the river, where farmers traded grain and wool. "
    "Over the centuries it grew into a market town, then a port, and finally the capital of the region. "
)


@dataclass(frozen=True)
class Measurement:
    test: str  # "pp512", "tg128"
    tokens: int
    rates: tuple[float, ...]  # tokens/s of each repeat

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def as_dict(self) -> dict[str, object]:
        return {"test": self.test, "tokens": self.tokens, "median_tokens_per_s": round(self.median, 2),
                "min": round(min(self.rates), 2), "max": round(max(self.rates), 2), "runs": [round(r, 2) for r in self.rates]}  # fmt: skip


def prompt_ids(tokenizer: Tokenizer, n: int) -> list[int]:
    """`n` token ids of ordinary English text (the same ids for every engine compared)."""
    ids: list[int] = []
    text = FILLER
    while len(ids) < n:
        text += FILLER
        ids = tokenizer.encode(text)
    return ids[:n]


def run_prefill(model: Transformer, tokenizer: Tokenizer, ids: list[int]) -> float:
    """Tokens/s of one prefill of `ids`."""
    generation = Generation(
        model, tokenizer, ids, GenerationSettings(max_tokens=1, sampling=SamplingSettings(temperature=0), ignore_eos=True)
    )
    for _ in generation:
        pass
    return len(ids) / generation.stats.prefill_seconds


def run_decode(model: Transformer, tokenizer: Tokenizer, first: int, n: int) -> float:
    """Tokens/s of generating `n` tokens greedily after the one-token prompt `[first]`."""
    settings = GenerationSettings(max_tokens=n, sampling=SamplingSettings(temperature=0), ignore_eos=True)
    generation = Generation(model, tokenizer, [first], settings)
    for _ in generation:
        pass
    return generation.stats.decode_rate


def bench(model: Transformer, tokenizer: Tokenizer, *, prompt_tokens: int, gen_tokens: int, repeats: int) -> list[Measurement]:
    """pp<prompt_tokens> and tg<gen_tokens> (either skipped when 0), each warmed up once then run `repeats` times."""
    results = []
    if prompt_tokens:
        ids = prompt_ids(tokenizer, prompt_tokens)
        rates = [run_prefill(model, tokenizer, ids) for _ in range(repeats + 1)][1:]
        results.append(Measurement(f"pp{prompt_tokens}", prompt_tokens, tuple(rates)))
    if gen_tokens > 1:
        first = prompt_ids(tokenizer, 1)[0]
        rates = [run_decode(model, tokenizer, first, gen_tokens) for _ in range(repeats + 1)][1:]
        results.append(Measurement(f"tg{gen_tokens}", gen_tokens, tuple(rates)))
    return results
