"""GGUF 4-bit and 8-bit blocks repacked, not re-quantized, for torch's CPU int4 kernel.

`torch._weight_int4pack_mm_for_cpu` multiplies bfloat16 activations by 4-bit weights stored in
groups of 32 along the input, each group with a scale and a zero: w = (u - 8) * scale + zero,
u in 0..15. GGUF's Q4_0 and Q4_1 blocks are exactly that shape, so their codes move across as
they are and only the two fp16 block constants become bfloat16:
- Q4_1: w = u * d + m           -> scale d, zero m + 8d
- Q4_0: w = (u - 8) * d         -> scale d, zero 0
- Q8_0: w = q * d, q in -128..127, does not fit 4 bits; it is split exactly as q = 16 * hi + lo
  (hi in -8..7, lo in 0..15) into two 4-bit halves laid side by side along the input:
  [hi + 8 with scale 16d, zero 0 | lo with scale d, zero 8d]. The input is then `cat(x, x)`,
  and one kernel call sums both halves. Reading 4 + 4 bits costs what int8 would.
So the weights the kernel sees differ from the file's only by the bfloat16 rounding of d and m
(8 bits of mantissa instead of 11). Other tensor types (F32, F16, K-quants) are not packed (the
fast path is then not used: fastpath.py).

The packed layout of `_convert_weight_to_int4pack_for_cpu` depends on the CPU capability torch
runs with (AVX-512 and AVX2 tile differently) and may change between torch versions; `pack_key`
names both, and the cache of packed weights (fastpath.py) is keyed on it.

The kernel is fast for a few rows (decode) and slow for many (it is not a GEMM); fastpath.py
keeps a dense bfloat16 copy of the same weights for prompt processing, where oneDNN's bfloat16
GEMM is compute-bound and fast.

References: llama.cpp ggml-quants.c (block layouts), pytorch aten/native/cpu/int4mm_kernel.cpp,
pytorch-labs/gpt-fast quantize.py (int4 weight-only linear layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GROUP = 32  # elements per GGUF block, and the int4 kernel's group size
# By ggml type name (GGMLQuantizationType.name): the gguf package is not imported on cached runs.
FOUR_BIT = ("Q4_0", "Q4_1")
PACKABLE = (*FOUR_BIT, "Q8_0")
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def pack_key() -> str:
    """What the packed layout depends on: torch's version and the CPU capability it dispatches to."""
    return f"torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


@dataclass
class Blocks:
    """Weights (N, K) as 4-bit codes: w = (codes - 8) * scale + zero per group of 32 inputs.

    With `doubled`, K is twice the layer's input width: the two halves of an 8-bit weight (see
    the module docstring), and the input must be fed as `cat(x, x)`.
    """

    codes: torch.Tensor  # uint8 (N, K), values 0..15
    scale: torch.Tensor  # float32 (N, K // 32)
    zero: torch.Tensor  # float32 (N, K // 32)
    doubled: bool = False

    def dense(self) -> torch.Tensor:
        """The float32 weights (N, in_features) these codes stand for (exact: fp16 constants, float32 math)."""
        n, k = self.codes.shape
        w = (self.codes.float().view(n, k // GROUP, GROUP) - 8) * self.scale[..., None] + self.zero[..., None]
        w = w.reshape(n, k)
        return w[:, : k // 2] + w[:, k // 2 :] if self.doubled else w

    def as_doubled(self) -> Blocks:
        """The same weights in the doubled form (to stack them with 8-bit ones): a zero hi half."""
        if self.doubled:
            return self
        return Blocks(
            torch.cat([torch.full_like(self.codes, 8), self.codes], dim=1),  # hi codes 8 with scale 0: nothing
            torch.cat([torch.zeros_like(self.scale), self.scale], dim=1),
            torch.cat([torch.zeros_like(self.zero), self.zero], dim=1),
            doubled=True,
        )

    def rows(self, index: torch.Tensor) -> Blocks:
        """These blocks with their rows reordered (q/k rows into the rotate-half layout)."""
        return Blocks(self.codes[index], self.scale[index], self.zero[index], self.doubled)


def concat_rows(parts: list[Blocks]) -> Blocks:
    """Blocks of several weights stacked along the output (wq, wk, wv -> one matmul)."""
    assert len({p.doubled for p in parts}) == 1
    return Blocks(
        torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]), torch.cat([p.zero for p in parts]), parts[0].doubled
    )


def read_blocks(path: Path, offset: int, n_bytes: int, kind: str, shape: tuple[int, int]) -> Blocks:
    """The codes and constants of one Q4_0, Q4_1 or Q8_0 tensor (`kind`), read straight from the GGUF file.

    `shape` is (rows, cols) in torch order; each row is cols / 32 consecutive blocks.
    """
    rows, cols = shape
    nb = cols // GROUP
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(n_bytes,))
    if kind == "Q8_0":  # 34 bytes: d (fp16), 32 x int8
        blocks = np.asarray(raw).reshape(rows, nb, 34)
        d = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))
        q = torch.from_numpy(blocks[..., 2:].copy().view(np.int8)).to(torch.int16)  # (rows, nb, 32)
        hi, lo = q >> 4, q & 15  # q = 16 * hi + lo, hi in -8..7, lo in 0..15
        codes = torch.cat([(hi + 8).reshape(rows, cols), lo.reshape(rows, cols)], dim=1).to(torch.uint8)
        scale = torch.cat([16 * d, d], dim=1)
        zero = torch.cat([torch.zeros_like(d), 8 * d], dim=1)
        return Blocks(codes, scale, zero, doubled=True)
    size = BLOCK_BYTES[kind]
    blocks = np.asarray(raw).reshape(rows, nb, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., size - 16 :]  # 16 bytes: low nibbles are elements 0..15, high nibbles 16..31
    codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(rows, cols)
    if kind == "Q4_1":  # 20 bytes: d, m (fp16), 16 bytes of nibbles; w = u * d + m
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = m + 8 * d
    else:  # Q4_0, 18 bytes: d (fp16), 16 bytes of nibbles; w = (u - 8) * d
        zero = np.zeros_like(d)
    return Blocks(torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(zero))


def pack(blocks: Blocks) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 (N, K/2) in the kernel's layout, scales and zeros bfloat16 (K/32, N, 2))."""
    packed = torch._convert_weight_to_int4pack_for_cpu(blocks.codes.to(torch.int32), 1)
    scales_zeros = torch.stack([blocks.scale, blocks.zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, scales_zeros


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, *, doubled: bool = False) -> torch.Tensor:
    """x (rows, in) bfloat16 times the packed weights' transpose: (rows, out) bfloat16."""
    if doubled:
        x = torch.cat((x, x), dim=-1)  # (rows, 2 * in): the hi and lo halves of 8-bit weights
    return torch._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_zeros)
