"""Make GGUF test files the way users get them: an F16 GGUF written with `gguf`, then quantized.

    python bench/make_models.py --out /work/models                       # default + tiny, every preset
    python bench/make_models.py --out /work/models --presets Q4_K_M,Q8_0
    python bench/make_models.py --out /work/models --1b                  # + the Llama-3.2-1B-shaped F16 and Q4_K_M

Models: `default` (SmolLM2-135M-Instruct dequantized from the installed Q4_1, all metadata kept),
`tiny` (2 layers, dim 256, random weights, SmolLM2's tokenizer), and with --1b `llama32-1b`
(Llama-3.2-1B's shapes, Llama 3 vocabulary and template, random weights: 2.5 GB F16, ~0.8 GB
Q4_K_M; minutes to write and quantize on 2 cores). Presets go through llama.cpp's quantizer
(llama-cpp-python, the `bench` extra); without it, the legacy types come from `gguf.quants` and
K-quants are skipped with a note. Existing files are kept: delete one to remake it.
The functions live in llama_cli/testing_models.py, which the tests use too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llama_cli.testing_models import PRESETS, QuantizerMissing, base_file, has_llama_cpp, model_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the files")
    parser.add_argument("--models", default="default,tiny", help="comma-separated: default, tiny (default: both)")
    parser.add_argument("--presets", default="all", help=f"'all' or comma-separated from {','.join(PRESETS)}")
    parser.add_argument("--1b", dest="one_b", action="store_true", help="also the Llama-3.2-1B-shaped file (F16 and --1b-presets)")
    parser.add_argument("--1b-presets", dest="one_b_presets", default="Q4_K_M", help="presets of the 1B file (default: Q4_K_M)")
    parser.add_argument(
        "--engine", choices=("auto", "llama.cpp", "gguf"), default="auto", help="quantizer (auto: llama.cpp when installed)"
    )
    args = parser.parse_args()

    def presets(text: str) -> list[str]:
        names = list(PRESETS) if text == "all" else [p.strip() for p in text.split(",") if p.strip()]
        unknown = [p for p in names if p not in PRESETS]
        if unknown:
            parser.error(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
        return names

    jobs = [(model, preset) for model in args.models.split(",") if model for preset in presets(args.presets)]
    if args.one_b:
        jobs += [("llama32-1b", preset) for preset in presets(args.one_b_presets)]
    print(f"quantizer: {'llama.cpp (llama-cpp-python)' if args.engine != 'gguf' and has_llama_cpp() else 'gguf.quants'}", file=sys.stderr)
    for model in dict.fromkeys(model for model, _ in jobs):
        report(lambda model=model: base_file(args.out, model))
    for model, preset in jobs:
        report(lambda model=model, preset=preset: model_file(args.out, model, preset, engine=args.engine), label=f"{model} {preset}")


def report(make, label: str = "") -> None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    try:
        path = make()
    except QuantizerMissing as exc:
        print(f"skipped {label}: {exc}", file=sys.stderr)
        return
    print(f"{path}  {path.stat().st_size / 1e6:.1f} MB  ({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
