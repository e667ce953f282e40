"""The model's RMSNorm, attention core and SwiGLU gate with C kernels for the quantized path's short passes.

A decode step of the default model (30 layers) spent as long in ~900 small torch calls (norms,
rotary embeddings, cache writes, attention, the gate: ~30 per layer) as in its matmuls. These
subclasses of model.py's modules do each piece in one C call (kernels/layer_ops.py) where the
layouts allow, and fall back to the reference forward (super()) everywhere else: the same module
tree and the same maths, as quantized.py's linear layers. `swap_kernel_modules` swaps them in.

What runs in C, and why only there:
- RMSNorm: every float32 CPU input (one pass per row instead of six calls);
- SwiGLU's gate: fewer than SMALL_PASS_ROWS rows; longer passes keep torch's vectorized silu;
- attention: passes of up to model.ROW_BY_ROW_ATTENTION queries over a cache (decode steps,
  prompt-lookup verification, the server's rows at their own positions). Each query is computed
  alone (as the reference does after a cached prefix), so a verified draft repeats plain decoding
  bit for bit. Longer passes (prompts) keep torch's scaled_dot_product_attention.
The C calls record no autograd graph: like the quantized linear layers, they are for inference.
"""

from __future__ import annotations

import torch

from .kernels import BF16_MIN_ROWS
from .kernels.layer_ops import attend, rmsnorm, swiglu
from .model import ROW_BY_ROW_ATTENTION, GatedSiLU, LayerCache, RMSNorm, RotaryAttention, Rows, Transformer

SMALL_PASS_ROWS = BF16_MIN_ROWS  # below this many rows the int8 matmuls run too: the decode-sized passes


class KernelRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype is torch.float32 and self.weight.dtype is torch.float32 and x.is_cpu and x.stride(-1) == 1:
            return rmsnorm(x, self.weight, self.eps)
        return super().forward(x)


class KernelGatedSiLU(GatedSiLU):
    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        # gate and up laid out alike (two tensors, or the halves of w13's output): their rows flatten alike
        if (
            gate.dtype is torch.float32
            and up.dtype is torch.float32
            and gate.is_cpu
            and gate.shape == up.shape
            and gate.stride() == up.stride()
            and gate.stride(-1) == 1
            and gate.numel() < SMALL_PASS_ROWS * gate.shape[-1]
        ):
            return swiglu(gate, up)
        return super().forward(gate, up)


class KernelRotaryAttention(RotaryAttention):
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int,
        mask: torch.Tensor | None,
        cache: LayerCache | None,
        **where: Rows,
    ) -> torch.Tensor:
        if cache is not None and q.shape[1] <= ROW_BY_ROW_ATTENTION and _fits(q, k, v, cos, sin, cache, **where):
            return attend(q, k, v, cos, sin, cache.k, cache.v, start_pos, where.get("rows"), where.get("positions"), n_heads=self.n_heads)
        return super().forward(q, k, v, cos, sin, start_pos, mask, cache, **where)


def _fits(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: LayerCache,
    rows: Rows = None,
    positions: Rows = None,
) -> bool:
    """Whether llk_attend can walk these: float32 CPU tensors, q, k, v with contiguous rows (k's and
    v's strides alike), contiguous tables and cache, int64 rows/positions."""
    return (
        q.dtype is torch.float32
        and cache.k.dtype is torch.float32
        and cos.dtype is torch.float32
        and q.is_cpu
        and q.stride(-1) == 1
        and k.stride(-1) == 1
        and k.stride() == v.stride()
        and cache.k.is_contiguous()
        and cache.v.is_contiguous()
        and cos.is_contiguous()
        and sin.is_contiguous()
        and all(t is None or (t.dtype is torch.int64 and t.is_contiguous()) for t in (rows, positions))
    )


def swap_kernel_modules(model: Transformer) -> None:
    """Give every norm, attention core and gate of `model` its C-backed forward (same parameters).

    The class of each module is swapped in place, so this works on the meta device before the
    weights are assigned, and the state dict's names do not change."""
    for module in model.modules():
        for base, kernel in ((RMSNorm, KernelRMSNorm), (RotaryAttention, KernelRotaryAttention), (GatedSiLU, KernelGatedSiLU)):
            if type(module) is base:
                module.__class__ = kernel
