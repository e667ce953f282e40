"""Prefill and decode speed of `llama` on the default model (or -m MODEL), printed as a table.

    python bench/speed.py                 # 512-token prompt, 128 generated tokens, 3 repeats
    python bench/speed.py -p 1000 -n 64 --dtype bfloat16 --threads 2

Figures are medians over repeats, with the spread (min-max). No assertion is made: the machines
are shared and noisy, so compare runs made side by side, as ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llama_cli import load
from llama_cli.generation import Generation, GenerationSettings
from llama_cli.sampling import SamplingSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("-p", "--prompt-tokens", type=int, default=512)
    parser.add_argument("-n", "--gen-tokens", type=int, default=128)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    llm = load(args.model, dtype=args.dtype, threads=args.threads)
    load_seconds = time.perf_counter() - started
    text = "The quick brown fox jumps over the lazy dog. " * (args.prompt_tokens // 5 + 10)
    prompt = llm.tokenizer.encode(text)[: args.prompt_tokens]
    settings = GenerationSettings(max_tokens=args.gen_tokens, sampling=SamplingSettings(temperature=0), ignore_eos=True)

    prefill, decode = [], []
    for _ in range(args.repeats + 1):  # the first run warms up allocators and caches
        generation = Generation(llm.model, llm.tokenizer, prompt, settings)
        for _ in generation:
            pass
        prefill.append(len(prompt) / generation.prefill_seconds)
        decode.append((generation.generated_tokens - 1) / generation.decode_seconds)
    prefill, decode = prefill[1:], decode[1:]

    print(f"model: {llm.checkpoint.source.name}  dtype: {str(llm.dtype).removeprefix('torch.')}  threads: {torch.get_num_threads()}  load: {load_seconds:.2f} s")
    print("| test | tokens | tok/s (median) | spread |")
    print("|---|---|---|---|")
    print(f"| prefill (pp{len(prompt)}) | {len(prompt)} | {statistics.median(prefill):.1f} | {min(prefill):.1f}-{max(prefill):.1f} |")
    print(f"| decode (tg{args.gen_tokens}) | {args.gen_tokens} | {statistics.median(decode):.1f} | {min(decode):.1f}-{max(decode):.1f} |")


if __name__ == "__main__":
    main()
