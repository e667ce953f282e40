"""llama.cpp, Hugging Face transformers and `llama` on the same GGUF, side by side in one run.

    pip install -e '.[bench]'      # llama-cpp-python, built from source: see bench/RESULTS.md for the flags
    python bench/compare.py                      # the default model, 2 threads, pp1000 / tg128, 5 rounds
    python bench/compare.py -p 512 -n 64 -r 3 --engines llama,llama.cpp
    python bench/compare.py --llama32-1b -p 512 -n 64 -r 3     # a Llama-3.2-1B-shaped Q4_K_M (made once, ~5 min)

Each engine runs in its own worker process (so neither OpenMP runtime spins while the other
works), loads the model once, and answers one measurement at a time; the parent alternates the
engines round by round (the order rotates each round), so a slow spell on a shared machine hits
all of them. Measured, per engine, in tokens/s:
- pp: prefill of a P-token prompt into an empty cache (the same token ids for every engine);
- tg: T tokens generated greedily after a one-token prompt, from the first token to the last.
Then, for `llama` and llama.cpp, whole commands in fresh processes (`llama generate` and its
llama-cpp-python equivalent, `Llama.generate`; a warm-up run first, so `llama`'s weight caches
exist): time to the first token, decode and prefill tokens/s from differences of wall times
(see `process_figures`), and peak RSS. Medians of the rounds are printed with their spread,
with ratios against llama.cpp and the machine's load.

`--llama32-1b` runs a file in Llama-3.2-1B's shapes (dim 2048, 16 layers, 32/8 heads, ffn 8192,
vocab 128256, Llama 3 tokenizer; random weights) quantized to Q4_K_M by llama.cpp's own
quantizer: what most people's files look like. It is made with llama_cli/testing_models.py (as
`python bench/make_models.py --1b` does) into --models-dir the first time, and runs llama and
llama.cpp only unless --engines says otherwise (transformers would need ~5 GB as float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ("llama", "llama.cpp", "transformers")


# ---------------------------------------------------------------- workers (one process per engine)


class LlamaWorker:
    def __init__(self, path: str, threads: int) -> None:
        from llama_cli import load

        self.llm = load(path, threads=threads)
        self.label = self.llm.path_label

    def tokens(self, n: int) -> list[int]:
        from llama_cli.benchmark import prompt_ids

        return prompt_ids(self.llm.tokenizer, n)

    def prefill(self, ids: list[int]) -> float:
        from llama_cli.benchmark import run_prefill

        return run_prefill(self.llm.model, self.llm.tokenizer, ids)

    def decode(self, first: int, n: int) -> float:
        from llama_cli.benchmark import run_decode

        return run_decode(self.llm.model, self.llm.tokenizer, first, n)


class LlamaCppWorker:
    """llama.cpp through llama-cpp-python's low-level calls: eval, then greedy argmax over the logits."""

    def __init__(self, path: str, threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=4096, n_batch=512, verbose=False)
        self.label = f"llama-cpp-python {llama_cpp.__version__}"

    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(ids)
        return len(ids) / (time.perf_counter() - started)

    def decode(self, first: int, n: int) -> float:
        import numpy as np

        self.llm.reset()
        self.llm.eval([first])
        started = time.perf_counter()
        token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        for _ in range(n - 1):  # the first token comes from the prompt's logits, as in `llama`
            self.llm.eval([token])
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        return (n - 1) / (time.perf_counter() - started)


class TransformersWorker:
    """transformers reading the same GGUF (dequantized to float32), its own KV cache, greedy argmax."""

    def __init__(self, path: str, threads: int) -> None:
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.torch = torch
        folder, name = str(Path(path).parent), Path(path).name
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
        self.label = f"transformers {transformers.__version__}, float32"

    def prefill(self, ids: list[int]) -> float:
        with self.torch.inference_mode():
            started = time.perf_counter()
            self.model(self.torch.tensor([ids]), use_cache=True, logits_to_keep=1)
            return len(ids) / (time.perf_counter() - started)

    def decode(self, first: int, n: int) -> float:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.tensor([[first]]), use_cache=True, logits_to_keep=1)
            started = time.perf_counter()
            for _ in range(n - 1):
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                out = self.model(token, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
            out.logits[:, -1].argmax(-1)
            return (n - 1) / (time.perf_counter() - started)


def worker_main(engine: str, path: str, threads: int) -> None:
    """Answer JSON requests on stdin ({"op": "prefill", "ids": [...]} / {"op": "decode", ...}) one line each."""
    import resource

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cls = {"llama": LlamaWorker, "llama.cpp": LlamaCppWorker, "transformers": TransformersWorker}[engine]
    worker = cls(path, threads)
    print(json.dumps({"ready": True, "label": worker.label}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "prefill":
            value: object = worker.prefill(request["ids"])
        elif request["op"] == "decode":
            value = worker.decode(request["first"], request["n"])
        else:
            break
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"value": value, "peak_rss_mb": rss_mb}), flush=True)


class Worker:
    def __init__(self, engine: str, path: str, threads: int) -> None:
        self.engine = engine
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LLAMA_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "--worker", engine, "-m", path, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.label = self._read()["label"]

    def _read(self) -> dict:  # type: ignore[type-arg]
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.engine} worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **request: object) -> dict:  # type: ignore[type-arg]
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------- whole processes: first token, peak memory


def timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit code) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


LLAMA_CPP_GENERATE = """
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]), n_ctx=4096, verbose=False)
ids = llm.tokenize(sys.argv[4].encode(), add_bos=False)
for i, token in enumerate(llm.generate(ids, top_k=1, temp=0)):
    print(llm.detokenize([token]).decode(errors="replace"), end="", flush=True)
    if i + 1 >= int(sys.argv[3]):
        break
"""


def process_figures(
    path: str, threads: int, prompt: str, long_prompt: str, extra_tokens: int, gen_tokens: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Whole commands, as a user runs them: per engine and round, three fresh processes.

    A: `-n 1` on a short prompt (time to first token), B: `-n 1+N` on the same prompt (ignoring
    end-of-sequence), C: `-n 1` on the long prompt. Decode tokens/s is N / (B - A) and prefill
    tokens/s is the extra prompt tokens / (C - A): start-up and loading cancel out, and what is
    left includes each tool's own per-token work (sampling, detokenizing, printing).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LLAMA_THREADS": str(threads)}
    llama = [sys.executable, "-m", "llama_cli", "generate", "-m", path, "-t", "0", "--ignore-eos", "--threads", str(threads)]
    cpp = [sys.executable, "-c", LLAMA_CPP_GENERATE, path, str(threads)]
    commands = {
        "llama": lambda n, text: llama + ["-n", str(n), text],
        "llama.cpp": lambda n, text: cpp + [str(n), text],
    }
    timed_process(commands["llama"](1, prompt), env)  # warm-up: `llama` writes its weight caches on a first run
    timed_process(commands["llama.cpp"](1, prompt), env)
    figures: dict[str, dict[str, list[float]]] = {e: {"ttft": [], "tg": [], "pp": [], "rss": []} for e in commands}
    for round_ in range(rounds):
        for engine in list(commands) if round_ % 2 == 0 else list(commands)[::-1]:
            command = commands[engine]
            first, _, code_a = timed_process(command(1, prompt), env)
            long_run, _, code_b = timed_process(command(1 + gen_tokens, prompt), env)
            prompt_run, rss, code_c = timed_process(command(1, long_prompt), env)
            ok = code_a == code_b == code_c == 0
            f = figures[engine]
            f["ttft"].append(first if ok else float("nan"))
            f["tg"].append(gen_tokens / (long_run - first) if ok else float("nan"))
            f["pp"].append(extra_tokens / (prompt_run - first) if ok else float("nan"))
            f["rss"].append(rss)
            print(
                f"process round {round_ + 1}: {engine:9s} first token {first:.2f} s, tg {f['tg'][-1]:.1f} tok/s, pp "
                f"{f['pp'][-1]:.1f} tok/s",
                file=sys.stderr,
            )
    return figures


# ---------------------------------------------------------------- the comparison


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--llama32-1b", action="store_true", help="the Llama-3.2-1B-shaped Q4_K_M (made in --models-dir unless there)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("LLAMA_BENCH_MODELS") or Path.home() / ".cache" / "llama-cli" / "bench-models"),
        help="where --llama32-1b keeps its files (default: $LLAMA_BENCH_MODELS or ~/.cache/llama-cli/bench-models)",
    )
    parser.add_argument("-p", "--prompt-tokens", type=int, default=1000)
    parser.add_argument("-n", "--gen-tokens", type=int, default=128)
    parser.add_argument("-r", "--rounds", type=int, default=5, help="rounds of llama / llama.cpp (transformers: at most 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--engines", default=None, help=f"comma-separated from {','.join(ENGINES)} (default: all; llama,llama.cpp with --llama32-1b)"
    )
    parser.add_argument("--no-process", action="store_true", help="skip the whole-process figures (first token, RSS)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llama32_1b and not args.worker:
        if args.model is not None:
            parser.error("give -m/--model or --llama32-1b, not both")
        from llama_cli.testing_models import model_file

        args.model = str(model_file(args.models_dir, "llama32-1b", "Q4_K_M", engine="llama.cpp"))
        print(f"model: {args.model}", file=sys.stderr)
    if args.model is None:
        from llama_cli.registry import resolve_model

        args.model = str(resolve_model(None))
    if args.worker:
        worker_main(args.worker, args.model, args.threads)
        return

    engines = [e.strip() for e in (args.engines or ("llama,llama.cpp" if args.llama32_1b else ",".join(ENGINES))).split(",") if e.strip()]
    load_before = os.getloadavg()
    started = time.time()
    workers = {engine: Worker(engine, args.model, args.threads) for engine in engines}
    from llama_cli.benchmark import prompt_ids
    from llama_cli.gguf_metadata import read_gguf_metadata
    from llama_cli.tokenizer import tokenizer_from_gguf

    tokenizer = tokenizer_from_gguf(read_gguf_metadata(args.model))  # the key/values only: no weights loaded here
    ids = prompt_ids(tokenizer, args.prompt_tokens)
    first = ids[0]
    for worker in workers.values():  # warm-up: allocators, thread pools, oneDNN kernels
        worker.ask(op="prefill", ids=ids)
        worker.ask(op="decode", first=first, n=8)
    results: dict[str, dict[str, list[float]]] = {e: {"pp": [], "tg": [], "rss": []} for e in engines}
    for round_ in range(args.rounds):
        order = engines[round_ % len(engines) :] + engines[: round_ % len(engines)]
        for engine in order:
            if engine == "transformers" and round_ >= 2:
                continue  # ~20x slower than the others; two rounds say enough
            pp = workers[engine].ask(op="prefill", ids=ids)
            tg = workers[engine].ask(op="decode", first=first, n=args.gen_tokens)
            results[engine]["pp"].append(pp["value"])
            results[engine]["tg"].append(tg["value"])
            results[engine]["rss"].append(tg["peak_rss_mb"])
            print(
                f"round {round_ + 1}: {engine:12s} pp{args.prompt_tokens} {pp['value']:8.1f} tok/s   tg{args.gen_tokens} "
                f"{tg['value']:7.1f} tok/s",
                file=sys.stderr,
            )
    labels = {engine: w.label for engine, w in workers.items()}
    for worker in workers.values():
        worker.close()
    processes = {}
    if not args.no_process and "llama" in engines and "llama.cpp" in engines:
        short = "The capital of France is"
        extra = len(ids) - len(tokenizer.encode(short))  # prompt tokens of the long prompt beyond the short one
        processes = process_figures(args.model, args.threads, short, tokenizer.decode(ids), extra, args.gen_tokens, args.rounds)
    load_after = os.getloadavg()

    base = "llama.cpp" if "llama.cpp" in engines else None
    lines = [
        (
            f"`python bench/compare.py{' --llama32-1b' if args.llama32_1b else ''} -p {args.prompt_tokens} -n {args.gen_tokens} -r "
            f"{args.rounds} --threads {args.threads}` on "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, {Path(args.model).name}, "
            f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({time.time() - started:.0f} s)."
        ),
        "",
        (f"| engine | pp{args.prompt_tokens} tok/s: median (spread) | x llama.cpp | tg{args.gen_tokens} tok/s: median (spread) | x "
        "llama.cpp | best-run ratios pp / tg | worker peak RSS |"),
        "|---|---|---|---|---|---|---|",
    ]
    for engine in engines:
        r = results[engine]
        pp_ratio = median(r["pp"]) / median(results[base]["pp"]) if base else float("nan")
        tg_ratio = median(r["tg"]) / median(results[base]["tg"]) if base else float("nan")
        best_pp = max(r["pp"]) / max(results[base]["pp"]) if base else float("nan")  # a busy machine only slows runs down
        best_tg = max(r["tg"]) / max(results[base]["tg"]) if base else float("nan")
        lines.append(
            f"| {engine} ({labels[engine]}) | {median(r['pp']):.1f} ({spread(r['pp'])}) | {pp_ratio:.2f} "
            f"| {median(r['tg']):.1f} ({spread(r['tg'])}) | {tg_ratio:.2f} | {best_pp:.2f} / {best_tg:.2f} | {max(r['rss']):.0f} MB |"
        )
    if processes:
        lines += [
            "",
            (f"| whole command | first token of `generate -n 1` (median, spread) | tg{args.gen_tokens} tok/s | x llama.cpp | "
            f"pp{args.prompt_tokens} tok/s | x llama.cpp | peak RSS, {args.prompt_tokens}-token prompt |"),
            "|---|---|---|---|---|---|---|",
        ]
        for engine in ("llama", "llama.cpp"):
            p, c = processes[engine], processes["llama.cpp"]
            lines.append(
                f"| {engine} | {median(p['ttft']):.2f} s ({min(p['ttft']):.2f}-{max(p['ttft']):.2f}) "
                f"| {median(p['tg']):.1f} ({spread(p['tg'])}) | {median(p['tg']) / median(c['tg']):.2f} "
                f"| {median(p['pp']):.1f} ({spread(p['pp'])}) | {median(p['pp']) / median(c['pp']):.2f} | {max(p['rss']):.0f} MB |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
