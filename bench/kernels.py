"""Speed of llama_cli.kernels on the Llama-3.2-1B matmul shapes, against torch's kernels.

    python bench/kernels.py                        # Q4_K Q6_K Q8_0 Q4_0 + torch, M = 1, 128, 512
    python bench/kernels.py --types Q4_K --rounds 5 --threads 2

Decode (M = 1) streams a whole model's weights per token, as a real decode does: 16 layers of
distinct tensors (q, k, v, o 2048x2048/512x2048, gate/up 8192x2048, down 2048x8192) and the
128256x2048 head, so the figures are memory-bound and not flattered by the 480 MB L3. Float
engines hold fewer distinct layers (a whole float32 model would not fit in memory here) and are
scaled to 16; those layers still exceed the L3. Prefill (M = 128, 512) is compute-bound and times
one layer's seven matmuls, times 16 (the head is left out: a prompt needs it for one row only).

Engines: our kernels per GGUF type; torch's `_weight_int4pack_mm_for_cpu` (4-bit, group 32,
bfloat16 activations); `F.linear` in float32 and bfloat16. All engines' weights are built first (~8 GB); rounds
alternate the engines and each figure is the median over rounds; the machine is shared, so compare within one run. llama.cpp for
reference (same machine class, 2 threads, whole engine): 1B Q4_K_M decode 41.7 tok/s, prefill
141 tok/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from llama_cli import kernels

DIM, KV_DIM, FFN, VOCAB, LAYERS = 2048, 512, 8192, 128256, 16
LAYER_SHAPES = {"q": (DIM, DIM), "k": (KV_DIM, DIM), "v": (KV_DIM, DIM), "o": (DIM, DIM),
                "gate": (FFN, DIM), "up": (FFN, DIM), "down": (DIM, FFN)}
HEAD_SHAPE = (VOCAB, DIM)
# Byte offsets of float16 scales in each block: random bytes there could be NaN or denormal.
F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
              "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_XS": (0,)}

Matmul = Callable[[torch.Tensor], torch.Tensor]


def random_gguf(qtype: str, n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """A valid GGUF tensor of random blocks (speed does not depend on the values)."""
    elements, nbytes = kernels.block_shape(qtype)
    blocks = rng.integers(0, 256, size=(n, k // elements, nbytes), dtype=np.uint8)
    for offset in F16_FIELDS.get(qtype, ()):
        blocks[..., offset : offset + 2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    return torch.from_numpy(blocks.reshape(n, -1))


class Engine:
    """One way of doing the model's matmuls: builds per-shape weights, returns x -> x @ W.T."""

    def __init__(self, name: str, layers: int, make: Callable[[int, int], Matmul], nbytes: Callable[[int, int], int]):
        self.name, self.layers, self.make, self.nbytes = name, layers, make, nbytes

    def build(self) -> tuple[list[dict[str, Matmul]], Matmul]:
        layers = [{key: self.make(n, k) for key, (n, k) in LAYER_SHAPES.items()} for _ in range(self.layers)]
        return layers, self.make(*HEAD_SHAPE)

    def token_bytes(self) -> int:
        return LAYERS * sum(self.nbytes(n, k) for n, k in LAYER_SHAPES.values()) + self.nbytes(*HEAD_SHAPE)


def quant_engine(qtype: str, rng: np.random.Generator) -> Engine:
    elements, nbytes = kernels.block_shape(qtype)

    def make(n: int, k: int) -> Matmul:
        weight = random_gguf(qtype, n, k, rng)
        return lambda x: kernels.linear(x, weight, qtype, n, k)

    return Engine(f"kernels {qtype}", LAYERS, make, lambda n, k: n * k // elements * nbytes)


def int4pack_engine(rng: np.random.Generator) -> Engine:
    def make(n: int, k: int) -> Matmul:
        codes = torch.from_numpy(rng.integers(0, 16, size=(n, k), dtype=np.int32))
        packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
        scales_zeros = torch.full((k // 32, n, 2), 0.01, dtype=torch.bfloat16)
        return lambda x: torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, 32, scales_zeros)

    return Engine("torch int4pack g32 bf16", LAYERS, make, lambda n, k: n * k // 2 + n * k // 32 * 4)


def dense_engine(dtype: torch.dtype, layers: int) -> Engine:
    def make(n: int, k: int) -> Matmul:
        weight = torch.randn(n, k).to(dtype) * 0.02
        return lambda x: F.linear(x.to(dtype), weight)

    size = torch.tensor([], dtype=dtype).element_size()
    return Engine(f"torch F.linear {str(dtype).removeprefix('torch.')}", layers, make, lambda n, k: n * k * size)


def time_decode(layers: list[dict[str, Matmul]], head: Matmul, per_call: dict[str, list[float]] | None = None) -> float:
    """Seconds for one token's matmuls: every layer once, scaled to 16 layers, plus the head.
    `per_call` collects each shape's mean seconds per call."""
    x = torch.randn(1, DIM)
    h = torch.randn(1, FFN)
    spent = dict.fromkeys([*LAYER_SHAPES, "head"], 0.0)
    for layer in layers:
        for key, fn in layer.items():
            start = time.perf_counter()
            fn(h if key == "down" else x)
            spent[key] += time.perf_counter() - start
    start = time.perf_counter()
    head(x)
    spent["head"] = time.perf_counter() - start
    if per_call is not None:
        for key, seconds in spent.items():
            per_call.setdefault(key, []).append(seconds / (1 if key == "head" else len(layers)))
    return sum(v for key, v in spent.items() if key != "head") * LAYERS / len(layers) + spent["head"]


def time_prefill(layer: dict[str, Matmul], m: int) -> float:
    """Seconds for m tokens through 16 layers' matmuls (one layer timed, times 16)."""
    x = torch.randn(m, DIM)
    h = torch.randn(m, FFN)
    start = time.perf_counter()
    for key, fn in layer.items():
        fn(h if key == "down" else x)
    return (time.perf_counter() - start) * LAYERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=["Q4_K", "Q6_K", "Q8_0", "Q4_0"])
    parser.add_argument("--prefill", nargs="*", type=int, default=[128, 512], help="prompt lengths M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch engines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit(f"no kernels: {kernels.describe()}")
    print(f"{kernels.describe()}; load average {os.getloadavg()[0]:.2f}", flush=True)

    rng = np.random.default_rng(0)
    engines = [quant_engine(t, rng) for t in args.types]
    if not args.no_torch:
        engines += [int4pack_engine(rng), dense_engine(torch.float32, 4), dense_engine(torch.bfloat16, 8)]
    decode: dict[str, list[float]] = {e.name: [] for e in engines}
    calls: dict[str, dict[str, list[float]]] = {e.name: {} for e in engines}
    prefill: dict[tuple[str, int], list[float]] = {(e.name, m): [] for e in engines for m in args.prefill}
    with torch.inference_mode():
        built = {e.name: e.build() for e in engines}  # ~8 GB for the default engines
        for layers, head in built.values():
            time_decode(layers, head)  # warm-up: page in, build caches
        for _ in range(args.rounds):
            for engine in engines:  # alternate engines within each round
                layers, head = built[engine.name]
                decode[engine.name].append(time_decode(layers, head, calls[engine.name]))
                for m in args.prefill:
                    prefill[(engine.name, m)].append(time_prefill(layers[0], m))
    load_after = os.getloadavg()[0]

    header = "| engine | decode ms/token (matmuls) | GB/s | tok/s bound | " + " | ".join(
        f"prefill M={m} tok/s" for m in args.prefill) + " |"
    print(header)
    print("|" + "---|" * (4 + len(args.prefill)))
    for engine in engines:
        seconds = statistics.median(decode[engine.name])
        cells = [f"{seconds * 1e3:.1f}", f"{engine.token_bytes() / seconds / 1e9:.1f}", f"{1 / seconds:.1f}"]
        cells += [f"{m / statistics.median(prefill[(engine.name, m)]):.0f}" for m in args.prefill]
        print(f"| {engine.name} | " + " | ".join(cells) + " |")
    shapes = {**LAYER_SHAPES, "head": HEAD_SHAPE}
    print("\nM = 1, per call: ms (GB/s)")
    print("| engine | " + " | ".join(f"{key} {n}x{k}" for key, (n, k) in shapes.items()) + " |")
    print("|" + "---|" * (1 + len(shapes)))
    for engine in engines:
        cells = []
        for key, (n, k) in shapes.items():
            seconds = statistics.median(calls[engine.name][key])
            cells.append(f"{seconds * 1e3:.2f} ({engine.nbytes(n, k) / seconds / 1e9:.1f})")
        print(f"| {engine.name} | " + " | ".join(cells) + " |")
    print(f"load average after: {load_after:.2f}; targets: decode <= {1e3 / 41.7 * 0.85:.1f} ms/token, "
          f"prefill >= {2 * 141} tok/s (llama.cpp 1B Q4_K_M: 41.7 / 141 tok/s)")


if __name__ == "__main__":
    main()
