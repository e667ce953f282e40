"""N concurrent streaming clients against an OpenAI-compatible server: aggregate tokens/s, time to first token, errors.

    python bench/serve.py                         # starts `llama serve` on the default model; 1, 8 and 64 clients
    python bench/serve.py --clients 1,8 -n 64 --parallel 8
    python bench/serve.py --engine llama-cpp      # llama-cpp-python's server on the same GGUF, run the same way
    python bench/serve.py --url http://127.0.0.1:8080 --clients 4   # a server that is already running
    python bench/serve.py --clients 1,8,1,8 --threads 1   # levels back to back, twice
    python bench/serve.py --clients '' --cli 5            # `llama generate --server` against the warm server

Each client sends one streaming /v1/completions request (the same prompt, its own seed,
`max_tokens` = -n, temperature 0.8) and counts the text chunks it receives as tokens. A level's
aggregate rate is all tokens received over the level's wall time; TTFT is from sending the
request to the first text chunk. A 503 is counted as refused (the server's bounded queue), any
other failure as an error. The server's resident memory is read from /proc before and after, and
its CPU time (user + sys) over each level, which a busy machine inflates less than wall time.
`--cli N` then runs `llama generate --server URL -n 1 -t 0 PROMPT` N times, one after another,
and prints the medians of the time to its first byte on stdout, its wall time and its CPU time.
Figures only, no assertions: the machines are shared, so compare levels of one run as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle. Once upon a time"


@dataclass
class Level:
    clients: int
    wall: float = 0.0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # each client's decode tokens/s after its first token
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    cpu: float = float("nan")  # the server's user + sys seconds over the level


async def one_client(http: httpx.AsyncClient, level: Level, seed: int, max_tokens: int) -> None:
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": True, "ignore_eos": True}
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    try:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code == 503:
                level.refused += 1
                await response.aread()
                return
            if response.status_code != 200:
                level.errors.append(f"{response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    level.errors.append(str(chunk["error"])[:200])
                    return
                if any(c.get("text") for c in chunk.get("choices", [])):
                    last = time.perf_counter()
                    first = first or last
                    tokens += 1
    except httpx.HTTPError as error:
        level.errors.append(f"{type(error).__name__}: {error}")
        return
    level.tokens += tokens
    if first:
        level.ttft.append(first - started)
        if tokens > 1 and last > first:
            level.rates.append((tokens - 1) / (last - first))


async def run_level(url: str, clients: int, max_tokens: int) -> Level:
    level = Level(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600), limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(http, level, seed, max_tokens) for seed in range(clients)))
        level.wall = time.perf_counter() - started
    return level


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | None) -> float:
    """user + sys seconds of a process so far (all its threads), from /proc."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def run_timed_level(url: str, clients: int, max_tokens: int, pid: int | None) -> Level:
    before = cpu_seconds(pid)
    level = asyncio.run(run_level(url, clients, max_tokens))
    level.cpu = cpu_seconds(pid) - before
    return level


def cli_first_tokens(url: str, runs: int) -> tuple[list[float], list[float], list[float]]:
    """(first stdout byte, wall, user + sys) seconds of each of `runs` `llama generate --server` commands."""
    command = [sys.executable, "-m", "llama_cli", "generate", "--server", url, "-n", "1", "-t", "0", "The capital of France is"]
    firsts, walls, cpus = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert process.stdout is not None
        process.stdout.read(1)
        firsts.append(time.perf_counter() - started)
        process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        walls.append(time.perf_counter() - started)
        cpus.append(usage.ru_utime + usage.ru_stime)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(command)} exited with {os.waitstatus_to_exitcode(status)}")
    return firsts, walls, cpus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    engine: str, model: str | None, parallel: int, ctx: int, threads: int | None, dtype: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if engine == "llama":
        command = [
            sys.executable,
            "-m",
            "llama_cli",
            "serve",
            "--port",
            str(port),
            "--parallel",
            str(parallel),
            "--ctx",
            str(ctx),
            "--queue",
            "64",
        ]
        command += ["-m", model] if model else []
        command += ["--threads", str(threads)] if threads else []
        command += ["--dtype", dtype]
    else:  # llama-cpp-python's server (pip install 'llama-cpp-python[server]'), one slot per client up to --parallel
        from llama_cli.registry import resolve_model

        path = str(resolve_model(model))
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(ctx),
        ]
        command += ["--n_threads", str(threads)] if threads else []
        command += ["--interrupt_requests", "False"]  # queue concurrent requests instead of cutting the running one
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + ("/health" if engine == "llama" else "/v1/models"), timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"the {engine} server exited with {process.returncode}: {' '.join(command)}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the {engine} server did not come up in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an OpenAI-compatible server already running (default: start one)")
    parser.add_argument("--engine", choices=["llama", "llama-cpp"], default="llama", help="the server to start")
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--clients", default="1,8,64", help="comma-separated numbers of concurrent clients")
    parser.add_argument("-n", "--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8, help="llama serve --parallel (batch rows)")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="auto", help="llama serve --dtype")
    parser.add_argument("--cli", type=int, default=0, metavar="N", help="then time N `llama generate --server` runs")
    args = parser.parse_args()

    process = None
    url = args.url
    if url is None:
        process, url = start_server(args.engine, args.model, args.parallel, args.ctx, args.threads, args.dtype)
    pid = process.pid if process is not None else None
    load_before = os.getloadavg()[0]
    rss_before = rss_mb(pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server we started
    try:
        asyncio.run(run_level(url, 1, 4))  # warm-up
        levels = [run_timed_level(url, int(n), args.max_tokens, pid) for n in args.clients.split(",") if n]
        cli = cli_first_tokens(url, args.cli)
    finally:
        rss_after = rss_mb(pid)
        if process is not None:
            process.terminate()
            process.wait(60)
    name = args.engine if args.url is None else url
    print(
        f"server: {name}  model: {args.model or 'default'}  dtype: {args.dtype}  max_tokens: {args.max_tokens}  parallel: {args.parallel}  "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; server RSS {rss_before:.0f} MB -> {rss_after:.0f} MB"
    )
    base = levels[0].tokens / levels[0].wall if levels and levels[0].wall else float("nan")
    print(
        "| clients | served | refused (503) | errors | tokens | wall s | aggregate tok/s | x 1st level | per-client decode tok/s "
        "(median) | TTFT p50 s | TTFT p95 s | server CPU s | tokens per CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for level in levels:
        rate = level.tokens / level.wall if level.wall else float("nan")
        per_client = statistics.median(level.rates) if level.rates else float("nan")
        print(
            f"| {level.clients} | {len(level.ttft)} | {level.refused} | {len(level.errors)} | {level.tokens} | {level.wall:.1f} "
            f"| {rate:.1f} | {rate / base:.2f} | {per_client:.1f} | {percentile(level.ttft, 0.5):.2f} "
            f"| {percentile(level.ttft, 0.95):.2f} | {level.cpu:.1f} | {level.tokens / level.cpu if level.cpu else float('nan'):.1f} |"
        )
    if args.cli:
        firsts, walls, cpus = cli
        print(
            f"`llama generate --server` x {args.cli}: first byte on stdout median {statistics.median(firsts):.3f} s "
            f"(min {min(firsts):.3f}, max {max(firsts):.3f}); wall {statistics.median(walls):.3f} s; CPU {statistics.median(cpus):.3f} s"
        )
    for level in levels:
        for error in level.errors[:3]:
            print(f"error ({level.clients} clients): {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
