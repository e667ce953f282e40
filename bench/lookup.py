"""Decode speed with prompt-lookup decoding against plain decoding, summarizing a ~2,000-token document.

    python bench/lookup.py                        # default model, --lookup 8, 3 repeats, both weight paths
    python bench/lookup.py --lookup 4 -n 300 --threads 2 --dtype float32
    python bench/lookup.py --file notes.txt

The document is the texts in tests/data/presets/ joined until it reaches --tokens tokens (or
--file). Every run is greedy on the same `summarize` prompt, on the CPU fast path (int4
weights, `--dtype auto`) and on the float32 reference; plain and lookup runs alternate, and the
figures are medians. Decode speed is given per wall-clock second and per CPU-second of this
process (steadier when other jobs share the cores). The script checks that lookup's text is
identical to plain decoding's. No assertion on speed: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from llama_cli import load
from llama_cli.generation import Generation, GenerationSettings
from llama_cli.presets.recipes import SUMMARIZE, summary_fields
from llama_cli.sampling import SamplingSettings

DOCS = Path(__file__).resolve().parent.parent / "tests" / "data" / "presets"
ORDER = ("harbour.txt", "library.txt", "report.txt", "eiffel.txt", "story.txt")


def document(llm, target: int) -> str:  # type: ignore[no-untyped-def]
    parts: list[str] = []
    for name in ORDER:
        parts.append((DOCS / name).read_text().strip())
        if len(llm.tokenizer.encode("\n\n".join(parts))) >= target:
            break
    return "\n\n".join(parts)


def decode(llm, prompt: list[int], settings: GenerationSettings) -> tuple[Generation, float]:  # type: ignore[no-untyped-def]
    """Run one generation; returns it and the CPU seconds its decoding took (after the first token)."""
    generation = Generation(llm.model, llm.tokenizer, prompt, settings)
    tokens = iter(generation)
    next(tokens)  # prefill and the first token
    started = time.process_time()
    for _ in tokens:
        pass
    return generation, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--file", type=Path, default=None, help="summarize this file instead")
    parser.add_argument("--tokens", type=int, default=2000, help="document length to assemble (default 2000)")
    parser.add_argument("-n", "--max-tokens", type=int, default=200)
    parser.add_argument("--lookup", type=int, default=SUMMARIZE.lookup, help="most drafted tokens per step")
    parser.add_argument(
        "--dtype", action="append", default=None, help="auto (the fast path on CPU) and/or float32; repeatable (default: both)"
    )
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    models = {dtype: load(args.model, dtype=dtype, threads=args.threads) for dtype in args.dtype or ["auto", "float32"]}
    first = next(iter(models.values()))
    text = args.file.read_text() if args.file else document(first, args.tokens)
    prompt = first.encode_chat(SUMMARIZE.messages(text=text, **summary_fields(length="medium")))
    plain = GenerationSettings(max_tokens=args.max_tokens, sampling=SamplingSettings(temperature=0))
    runs = [
        (dtype, name, settings)
        for dtype in models
        for name, settings in (("plain", plain), ("lookup", dataclasses.replace(plain, lookup=args.lookup)))
    ]

    wall: dict[tuple[str, str], list[float]] = {(d, n): [] for d, n, _ in runs}
    cpu: dict[tuple[str, str], list[float]] = {(d, n): [] for d, n, _ in runs}
    texts: dict[tuple[str, str], str] = {}
    counts: dict[str, tuple[int, int]] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up allocators, caches and scripted code
        for dtype, name, settings in runs:  # plain and lookup alternate, so both see the same load
            generation, cpu_seconds = decode(models[dtype], prompt, settings)
            if texts.setdefault((dtype, name), generation.text) != generation.text:
                raise SystemExit(f"{dtype} {name}: greedy output changed between repeats")
            if repeat:
                decoded = generation.stats.generated_tokens - 1
                wall[dtype, name].append(decoded / generation.stats.decode_seconds)
                cpu[dtype, name].append(decoded / cpu_seconds)
                if name == "lookup":
                    counts[dtype] = (generation.stats.accepted_tokens, generation.stats.drafted_tokens)

    print(
        f"model: {first.checkpoint.source.name}  threads: {torch.get_num_threads()}  prompt: {len(prompt)} tokens  "
        f"summary: {plain.max_tokens} tokens at most  repeats: {args.repeats}"
    )
    print("| weights | decoding | tok/s (median, wall) | tok per CPU-second | speedup (wall / CPU) | drafted tokens accepted | same text |")
    print("|---|---|---|---|---|---|---|")
    for dtype, name, _ in runs:
        w, c = statistics.median(wall[dtype, name]), statistics.median(cpu[dtype, name])
        w0, c0 = statistics.median(wall[dtype, "plain"]), statistics.median(cpu[dtype, "plain"])
        label = "fast path (int4)" if models[dtype].fast else str(models[dtype].dtype).removeprefix("torch.")
        accepted, drafted = counts[dtype]
        extra = (
            f"{w / w0:.2f}x / {c / c0:.2f}x | {accepted} of {drafted} | {texts[dtype, name] == texts[dtype, 'plain']}"
            if name == "lookup"
            else "1.00x | - | -"
        )
        print(f"| {label} | {name if name == 'plain' else f'prompt lookup ({args.lookup})'} | {w:.1f} | {c:.1f} | {extra} |")


if __name__ == "__main__":
    main()
