"""CPU matmul kernels over GGUF's quantized block formats, in C, built at first use.

`linear(x, weight, qtype, out_features, in_features)` computes x @ W.T where W is a GGUF tensor's
raw bytes, without materialising W as floats. Two paths:
- few rows (decode, M < BF16_MIN_ROWS): the activations are quantized to int8 per row and each
  weight block is unpacked in registers and dotted with up to 8 activation rows at once
  (llama.cpp's design, ggml/src/ggml-cpu/arch/x86/quants.c, with our own register tiling).
  Batch-invariant: each output row is bit-identical to that row computed alone, whatever M and
  the thread count (prompt-lookup decoding relies on it to reproduce plain decoding's tokens);
- many rows (prefill): tiles of ~8 MB of W are dequantized to bfloat16 in C and multiplied with
  torch's bfloat16 matmul (oneDNN, which uses AMX or AVX512-BF16 where the CPU has them): several
  times the int8 kernels' throughput here, and only one small tile exists at a time.
`dequantize` gives exact float32 rows (bit-identical to `gguf.quants.dequantize`), for embedding
lookups and for callers without the compiled library.

The libraries are compiled with the system C compiler at first use and cached per source,
compiler and CPU (see _build.py): a core library the first time `available()` is asked, and one
small library per tensor type's int8 kernel, built for the types a model holds when it loads
(`prepare`, all in parallel) or when a type is first used. Where that is impossible, `available()`
is False, `describe()` says why, and `linear`/`dequantize` raise RuntimeError: the caller falls
back to torch. Set LLAMA_NO_KERNELS=1 to act as if no compiler existed.

What this does not do: F32 weights (use torch), CUDA tensors, or any type outside SUPPORTED.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# ggml type ids (the numbers of gguf.GGMLQuantizationType) and (elements, bytes) per block.
_TYPES: dict[str, tuple[int, int, int]] = {
    "F16": (1, 1, 2),
    "BF16": (30, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "IQ4_NL": (20, 32, 18),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
    "IQ4_XS": (23, 256, 136),
}
SUPPORTED: frozenset[str] = frozenset(_TYPES)
# From this many activation rows on, `linear` takes the bfloat16-tile path (where torch's bfloat16
# matmul is fast); below it, the int8 kernels. Measured crossover here (one core, AMX): 16-32
# rows, where dequantizing a tile costs as much as the int8 kernels' extra arithmetic.
BF16_MIN_ROWS = 32
TILE_BYTES = 8 << 20  # bfloat16 weight tile per matmul call (2 MB: 241 tok/s at M=512, 8 MB: 260, 32 MB: 202)

_lib: ctypes.CDLL | None = None  # the core library (_build.py)
_type_libs: dict[str, ctypes.CDLL] = {}  # one small library per type's int8 kernel
_kernels: dict[int, int | None] = {}  # type id -> that kernel's address (None: portable C)
_error: str | None = None


def block_shape(qtype: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type, e.g. Q4_K -> (256, 144)."""
    try:
        _, elements, nbytes = _TYPES[qtype]
    except KeyError:
        raise ValueError(f"unsupported tensor type {qtype!r}; supported: {', '.join(sorted(SUPPORTED))}") from None
    return elements, nbytes


def available() -> bool:
    """Whether the compiled kernels can run here; builds (first call) or loads the core library."""
    return prepare(())


def prepare(qtypes: Iterable[str]) -> bool:
    """available(), with the int8 kernels of `qtypes` built too, all in parallel (a model's load
    calls this with the types it holds; other types build when first used)."""
    global _lib, _error
    if _error is not None:
        return False
    wanted = {name: _TYPES[name][0] for name in qtypes if name in _TYPES and _TYPES[name][0] not in _kernels}
    if _lib is not None and not wanted:
        return True
    if os.environ.get("LLAMA_NO_KERNELS"):
        _error = "LLAMA_NO_KERNELS is set"
        return False
    from ._build import KernelBuildError, load

    try:
        core, per_type = load(wanted)
    except KernelBuildError as exc:
        if _lib is None:
            _error = str(exc)
            return False
        for tid in wanted.values():  # the core works and these types do not build: they run its portable kernels
            _kernels[tid] = None
        return True
    _lib = _lib or core
    for name, lib in per_type.items():
        _type_libs[name] = lib
        _kernels[_TYPES[name][0]] = lib.llk_simd_kernel(_TYPES[name][0]) or None
    return True


def kernel_of(qtype: str) -> int | None:
    """The address of `qtype`'s SIMD int8 kernel for llk_linear (None: none on this CPU, the portable one runs)."""
    tid = _type_id(qtype)
    if tid not in _kernels:
        prepare((qtype,))
    return _kernels.get(tid)


def describe() -> str:
    """One line for `llama show`/`bench`: which kernels run, e.g. "C kernels, AVX512-VNNI, 2 threads"."""
    import torch

    if not available():
        return f"pure torch ({_error})"
    isa = _library().llk_isa().decode()
    isa = "portable C, no SIMD" if isa == "scalar" else isa
    return f"C kernels, {isa}, {torch.get_num_threads()} threads"


def simd_types() -> frozenset[str]:
    """The SUPPORTED types that have a SIMD kernel on this CPU (the rest run portable C); builds every type's."""
    prepare(SUPPORTED)
    return frozenset(name for name in SUPPORTED if kernel_of(name) is not None)


def linear(
    x: torch.Tensor, weight: torch.Tensor, qtype: str, out_features: int, in_features: int, *, float32_out: bool = False
) -> torch.Tensor:
    """x @ W.T for x float32 (M, K) and W the raw GGUF bytes, uint8 (N, row_bytes); float32 (M, N).

    `float32_out` keeps every row on the int8 path, whose results are float32: for the output
    head, whose logits rounded to bfloat16 (steps of 1/16 at 10) would reorder near-ties.

    With fewer than BF16_MIN_ROWS rows the activations are rounded to int8 per block of 32 (per 256
    for the K-quants), as llama.cpp does (F16/BF16 weights use the float activations); with more,
    weights, activations and the results (torch's bfloat16 matmul returns bfloat16) are rounded to
    bfloat16. Either way results differ from float32 by ~1e-2 relative at most (~5e-3 and ~3e-3
    on the default model's weights). Runs on torch.get_num_threads() threads, without holding the GIL.
    """
    import torch

    M, N, K = x.shape[0], out_features, in_features
    if M >= BF16_MIN_ROWS and not float32_out and _bf16_matmul_is_fast():
        return _linear(x, weight, qtype, N, K, path="bf16")
    info = _TYPES.get(qtype)
    # The decode path runs ~100-200 times per token: check the arguments in one expression and
    # leave the explanations (and every unusual case) to _linear.
    if (
        _lib is None
        or info is None
        or x.dtype is not torch.float32
        or weight.dtype is not torch.uint8
        or x.dim() != 2
        or x.shape[1] != K
        or K % info[1]
        or weight.shape != (N, K // info[1] * info[2])
        or not x.is_cpu
        or not weight.is_cpu
        or not x.is_contiguous()
        or not weight.is_contiguous()
        or M == 0
    ):
        return _linear(x, weight, qtype, N, K, path="int8")
    out = torch.empty((M, N), dtype=torch.float32)
    if _lib.llk_linear(
        info[0], x.data_ptr(), M, K, weight.data_ptr(), N, weight.shape[1], out.data_ptr(), torch.get_num_threads(), kernel_of(qtype)
    ):
        raise RuntimeError(f"llk_linear failed for {qtype} {N}x{K}")
    return out


def small_linear(x: torch.Tensor, weight: torch.Tensor, type_id: int, kernel: int | None, out_features: int) -> torch.Tensor:
    """linear() for a decode-sized pass whose layouts the caller has checked once: x float32 (M, K),
    contiguous, on the CPU, M < BF16_MIN_ROWS; weight the raw bytes (out_features, row_bytes) of the
    type `type_id` (see `type_id`), `kernel` its kernel_of(). The int8 kernels without linear()'s
    per-call checks (the C side still refuses a K or row size that does not match the type)."""
    import torch

    M, K = x.shape
    out = torch.empty((M, out_features), dtype=torch.float32)
    if _lib.llk_linear(
        type_id,
        x.data_ptr(),
        M,
        K,
        weight.data_ptr(),
        out_features,
        weight.shape[1],
        out.data_ptr(),  # type: ignore[union-attr]
        torch.get_num_threads(),
        kernel,
    ):
        raise RuntimeError(f"llk_linear failed for type {type_id}, {out_features}x{K}")
    return out


def type_id(qtype: str) -> int:
    """The ggml type id of a SUPPORTED type (ValueError for others), for `small_linear`."""
    return _type_id(qtype)


def _linear(
    x: torch.Tensor, weight: torch.Tensor, qtype: str, out_features: int, in_features: int, *, path: str = "int8", simd: bool = True
) -> torch.Tensor:
    """linear() through a chosen path: "int8" (SIMD or, with simd=False, portable C) or "bf16"."""
    import torch

    lib = _library()
    type_id = _type_id(qtype)
    N, K = out_features, in_features
    _check_weight(weight, qtype, N, K)
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != K or x.device.type != "cpu":
        raise ValueError(f"x must be a float32 CPU tensor of shape (M, {K}), got {x.dtype} {tuple(x.shape)} on {x.device}")
    x = x.contiguous()
    out = torch.empty((x.shape[0], N), dtype=torch.float32)
    if x.shape[0] == 0 or N == 0:
        return out
    if path == "bf16":
        return _linear_bf16(x, weight, type_id, N, K, out)
    rc = lib.llk_linear(
        type_id,
        x.data_ptr(),
        x.shape[0],
        K,
        weight.data_ptr(),
        N,
        weight.shape[1],
        out.data_ptr(),
        torch.get_num_threads(),
        kernel_of(qtype) if simd else None,
    )
    if rc != 0:
        raise RuntimeError(f"llk_linear failed ({rc}) for {qtype} {N}x{K}")
    return out


def _linear_bf16(x: torch.Tensor, weight: torch.Tensor, type_id: int, N: int, K: int, out: torch.Tensor) -> torch.Tensor:
    """out = x @ W.T through bfloat16 tiles of W, one tile of ~TILE_BYTES at a time."""
    import torch

    lib, threads = _library(), torch.get_num_threads()
    xb = x.to(torch.bfloat16)
    rows = max(16, TILE_BYTES // (2 * K) // 16 * 16)
    tile = torch.empty((min(rows, N), K), dtype=torch.bfloat16)
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        part = tile[: n1 - n0]
        rc = lib.llk_dequant_bf16(type_id, weight.data_ptr(), weight.shape[1], K, n0, n1, part.data_ptr(), threads)
        if rc != 0:
            raise RuntimeError(f"llk_dequant_bf16 failed ({rc})")
        out[:, n0:n1] = torch.mm(xb, part.t())  # (M, n1 - n0), bfloat16 -> float32
    return out


_bf16_fast: bool | None = None


def _bf16_matmul_is_fast() -> bool:
    """Whether torch's bfloat16 matmul runs on native bfloat16 instructions (oneDNN: AMX or AVX512-BF16)."""
    global _bf16_fast
    if _bf16_fast is None:
        import torch

        try:
            _bf16_fast = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _bf16_fast = False
    return _bf16_fast


def dequantize(weight: torch.Tensor, qtype: str, in_features: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """float32 (n_rows, K) rows of W, bit-identical to gguf.quants.dequantize.

    `rows` (int64, any shape; flattened) selects rows, e.g. the token ids of an embedding lookup;
    None means every row.
    """
    import torch

    lib = _library()
    type_id = _type_id(qtype)
    K = in_features
    _check_weight(weight, qtype, weight.shape[0], K)
    rows_ptr = None
    n_rows = weight.shape[0]
    if rows is not None:
        rows = rows.reshape(-1).to(torch.int64).contiguous()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= weight.shape[0]):
            raise IndexError(f"row index out of range for a tensor of {weight.shape[0]} rows")
        rows_ptr, n_rows = rows.data_ptr(), rows.numel()
    out = torch.empty((n_rows, K), dtype=torch.float32)
    if n_rows == 0:
        return out
    rc = lib.llk_dequant(type_id, weight.data_ptr(), weight.shape[1], K, rows_ptr, n_rows, out.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"llk_dequant failed ({rc}) for {qtype} with {K} columns")
    return out


def _library() -> ctypes.CDLL:
    if not available():
        raise RuntimeError(f"the C kernels are not available: {_error}")
    assert _lib is not None
    return _lib


def _type_id(qtype: str) -> int:
    block_shape(qtype)  # raises ValueError for an unsupported type
    return _TYPES[qtype][0]


def _check_weight(weight: torch.Tensor, qtype: str, n_rows: int, K: int) -> None:
    import torch

    elements, nbytes = block_shape(qtype)
    if K % elements:
        raise ValueError(f"{qtype} rows hold whole blocks of {elements} elements; {K} columns do not")
    row_bytes = K // elements * nbytes
    if weight.dtype != torch.uint8 or weight.dim() != 2 or tuple(weight.shape) != (n_rows, row_bytes):
        raise ValueError(f"{qtype} weight must be uint8 of shape ({n_rows}, {row_bytes}), got {weight.dtype} {tuple(weight.shape)}")
    if not weight.is_contiguous() or weight.device.type != "cpu":
        raise ValueError("the weight must be a contiguous CPU tensor")
