"""The C kernels for the rest of a layer: RMSNorm, SwiGLU's gate, and attention over the KV cache.

A decode step spends most of its time outside the matmuls on ~30 small torch calls per layer
(F.rms_norm alone is six on the CPU, rotary embeddings ten, the cache write four), each costing
more than the few kilobytes of arithmetic it does. These do each piece in one call
(csrc/rows.c, csrc/attention.c); quantized.py swaps them into the model's module tree.

Each row (each query) is computed alone, in one order, so results do not depend on how many rows
a call carries or on the thread count. Callers check the layouts (float32, CPU, contiguous
rows); these functions only pass pointers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _library

if TYPE_CHECKING:
    import torch


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension; x float32 with contiguous rows."""
    import torch

    K = x.shape[-1]
    rows = x if x.is_contiguous() else x.reshape(-1, K)  # a view where rows lie one stride apart
    stride = K if rows is x else rows.stride(0)
    out = torch.empty(x.shape, dtype=torch.float32)
    _library().llk_rmsnorm(rows.data_ptr(), x.numel() // K, K, stride, weight.data_ptr(), eps, out.data_ptr(), torch.get_num_threads())
    return out


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate and up of one shape and layout, rows one stride apart
    (e.g. the two halves of a fused w1/w3 output)."""
    import torch

    F = gate.shape[-1]
    g, u = gate.reshape(-1, F), up.reshape(-1, F)  # views for the halves of w13's output
    out = torch.empty(gate.shape, dtype=torch.float32)
    _library().llk_swiglu(g.data_ptr(), u.data_ptr(), g.shape[0], F, g.stride(0), out.data_ptr(), torch.get_num_threads())
    return out


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    rows: torch.Tensor | None,
    positions: torch.Tensor | None,
    *,
    n_heads: int,
) -> torch.Tensor:
    """Attention of q (B, T, n_heads*head_dim) over the cache, after writing the new keys and values.

    k and v are (B, T, n_kv_heads*head_dim) with the same strides; each of q, k, v has contiguous
    rows (three tensors, or the thirds of a fused wqkv output). keys/values are one layer's
    cache (rows, n_kv_heads, S, head_dim), contiguous. Query (b, t) sits at position start + t of
    cache row b and sees keys 0..its position; `rows` (int64, B) picks other cache rows, and
    `positions` (int64, B; T = 1) puts row b's query at positions[b], with rotary tables of one
    row per b. cos/sin are float32 (T or B, head_dim). Returns (B, T, n_heads*head_dim) float32.
    """
    import torch

    B, T, _ = q.shape
    _, n_kv_heads, S, head_dim = keys.shape
    y = torch.empty((B, T, n_heads * head_dim), dtype=torch.float32)
    rc = _library().llk_attend(
        B,
        T,
        n_heads,
        n_kv_heads,
        head_dim,
        q.data_ptr(),
        q.stride(0),
        q.stride(1),
        k.data_ptr(),
        v.data_ptr(),
        k.stride(0),
        k.stride(1),
        cos.data_ptr(),
        sin.data_ptr(),
        keys.data_ptr(),
        values.data_ptr(),
        keys.shape[0],
        S,
        start,
        None if rows is None else rows.data_ptr(),
        None if positions is None else positions.data_ptr(),
        y.data_ptr(),
        torch.get_num_threads(),
    )
    if rc:
        raise RuntimeError(f"llk_attend failed ({rc}): positions beyond the cache's {S} or a bad cache row")
    return y
