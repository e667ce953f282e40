"""The cost of choosing a token, per row: `sample()` one row at a time and `sample_rows` over a batch.

    python bench/sampling.py            # 1 thread, logits of the default model's vocabulary size

Random logits (a fixed seed) of 49,152 tokens, the size of the default model's vocabulary; the
draws' cost does not depend on the model. Prints ms per row, the medians of 5 timings of 30
repetitions, and the log-softmax that each emitted token also costs (its logprob).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from llama_cli.sampling import SamplingSettings, sample, sample_rows

VOCAB, ROWS = 49152, 8


def per_call(fn: Callable[[], object], reps: int = 30) -> float:
    fn()
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        timings.append((time.perf_counter() - started) / reps)
    return statistics.median(timings)


def main() -> None:
    torch.set_num_threads(1)
    logits = torch.randn(ROWS, VOCAB, generator=torch.Generator().manual_seed(0)) * 2.5
    counts = torch.zeros(ROWS, VOCAB, dtype=torch.int32)
    counts[:, :200] = 1  # 200 tokens seen, for the penalties
    cases = {
        "default (top-k 40, top-p 0.95, min-p 0.05, t 0.8)": SamplingSettings(),
        "top-k 0 (the whole vocabulary)": SamplingSettings(top_k=0),
        "penalties on (repeat 1.1, presence 0.5)": SamplingSettings(repetition_penalty=1.1, presence_penalty=0.5),
    }
    for name, s in cases.items():
        generators = [torch.Generator().manual_seed(i) for i in range(ROWS)]
        alone = per_call(lambda s=s, g=generators: [sample(logits[i], s, g[i], counts[i]) for i in range(ROWS)]) / ROWS
        together = per_call(lambda s=s, g=generators: sample_rows(logits, s, g, counts)) / ROWS
        print(f"{name}: sample() one row at a time {alone * 1e3:.2f} ms/row; sample_rows over {ROWS} rows {together * 1e3:.2f} ms/row")
    emit = per_call(lambda: [torch.log_softmax(logits[i], -1) for i in range(ROWS)]) / ROWS
    print(f"log-softmax of a row (an emitted token's logprob) {emit * 1e3:.2f} ms; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
