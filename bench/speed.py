"""Prefill and decode speed of `llama` on the default model (or -m MODEL), printed as a table.

    python bench/speed.py                 # 512-token prompt, 128 generated tokens, 3 repeats
    python bench/speed.py -p 1000 -n 64 --dtype bfloat16 --threads 2

The measurements are `llama bench`'s (llama_cli/benchmark.py: ppN prefills an N-token prompt,
tgN generates N tokens after a one-token prompt); this script adds the load time. Figures are
medians over repeats, with the spread (min-max). No assertion is made: the machines are shared
and noisy, so compare runs made side by side, as ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from llama_cli import load
from llama_cli.benchmark import bench


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
    results = bench(llm.model, llm.tokenizer, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, repeats=args.repeats)

    print(f"model: {llm.checkpoint.source.name}  path: {llm.path_label}  threads: {torch.get_num_threads()}  load: {load_seconds:.2f} s")
    print("| test | tokens | tok/s (median) | spread |")
    print("|---|---|---|---|")
    for m in results:
        print(f"| {m.test} | {m.tokens} | {m.median:.1f} | {min(m.rates):.1f}-{max(m.rates):.1f} |")


if __name__ == "__main__":
    main()
