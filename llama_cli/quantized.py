"""Quantized linear and embedding layers, swapped into the one `Transformer` (model.py).

A GGUF's weights stay as the file stores them (Q4_K, Q6_K, Q8_0, F16, ...): `QuantizedLinear`
multiplies by them with the C kernels (kernels/: int8 activations times the blocks, as llama.cpp
does), and `QuantizedEmbedding` dequantizes only the rows it looks up. Everything else (norms,
rotary embeddings, attention, the KV cache) is the reference model's own code in float32. This is
gpt-fast's and torchchat's pattern: one module tree, faster parts swapped in.

`quantize_model(model, weights)` does the swapping for every tensor the kernels support, and
stacks wq/wk/wv and w1/w3 into one layer each where they share a block type (the model's
optional `wqkv` / `w13`); the rest load as float32 into the model's ordinary layers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .kernel_modules import swap_kernel_modules
from .kernels import BF16_MIN_ROWS, SUPPORTED, available, dequantize, kernel_of, linear, prepare, small_linear, type_id
from .model import Transformer
from .weights.quantized import QuantizedTensor

FLOAT32_TILE_ROWS = 32  # a float32 head from this many positions on (whole windows); fewer run the int8 kernel
TILE_BYTES = 32 << 20  # float32 weights dequantized at a time for it


class QuantizedLinear(nn.Module):
    """y = x W^T with W (out_features, in_features) kept in GGUF blocks; float32 in and out."""

    def __init__(self, weight: QuantizedTensor, *, float32_out: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.qtype = weight.qtype
        self.type_id, self.kernel = type_id(weight.qtype), kernel_of(weight.qtype)  # for the decode-sized passes
        self.float32_out = float32_out  # the head: never round outputs to bfloat16 (kernels.linear)
        # A buffer (moves with the module) that state_dict leaves out: it is the file's bytes, not a parameter.
        self.register_buffer("blocks", weight.data, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (B*T, in)
        if rows.shape[0] < BF16_MIN_ROWS and rows.dtype is torch.float32 and rows.is_contiguous() and rows.is_cpu:
            # The decode-sized pass, ~120 times a token: straight to the int8 kernel (kernels.linear checks more)
            return small_linear(rows, self.blocks, self.type_id, self.kernel, self.out_features).view(*x.shape[:-1], self.out_features)
        if rows.dtype != torch.float32 or not rows.is_contiguous():
            rows = rows.float().contiguous()
        if self.float32_out and rows.shape[0] >= FLOAT32_TILE_ROWS:
            y = self._float32_tiles(rows)
        else:
            y = linear(rows, self.blocks, self.qtype, self.out_features, self.in_features, float32_out=self.float32_out)  # (B*T, out)
        return y.view(*x.shape[:-1], self.out_features)

    def _float32_tiles(self, rows: torch.Tensor) -> torch.Tensor:
        """Every position's logits (perplexity, KL): float32 weights a tile of rows at a time, a float32
        matmul; the same logits as the reference model's, where int8 or bfloat16 rounding would
        reorder near-ties (top-1 agreement 97.8% -> 99.1% on the default model)."""
        out = torch.empty(rows.shape[0], self.out_features)
        step = max(1, TILE_BYTES // (4 * self.in_features))
        for start in range(0, self.out_features, step):
            stop = min(start + step, self.out_features)
            weights = dequantize(self.blocks[start:stop], self.qtype, self.in_features)  # (tile, in) float32
            torch.matmul(rows, weights.T, out=out[:, start:stop])
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"


class QuantizedEmbedding(nn.Module):
    """Rows of a quantized table, dequantized to float32 as they are looked up."""

    def __init__(self, weight: QuantizedTensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.qtype = weight.qtype
        self.register_buffer("blocks", weight.data, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.reshape(-1)
        rows = dequantize(self.blocks, self.qtype, self.embedding_dim, rows=flat)  # (B*T, dim)
        return rows.view(*tokens.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}"


def runs_quantized(weight: object) -> bool:
    """Whether the kernels multiply by this stored tensor directly."""
    return isinstance(weight, QuantizedTensor) and weight.qtype in SUPPORTED and available()


def quantize_model(model: Transformer, weights: Mapping[str, torch.Tensor | QuantizedTensor]) -> dict[str, torch.Tensor | QuantizedTensor]:
    """Swap a quantized module in for every weight the kernels support; return the weights left to load.

    `model` may be on the meta device (its remaining parameters are then assigned by the caller).
    A tied head shares the embedding's blocks: the head is a QuantizedLinear over the same bytes.
    """
    rest: dict[str, torch.Tensor | QuantizedTensor] = {}
    prepare({w.qtype for w in weights.values() if isinstance(w, QuantizedTensor)})  # every type's kernel built at once
    for name, weight in weights.items():
        if not runs_quantized(weight):
            rest[name] = weight
            continue
        assert isinstance(weight, QuantizedTensor)
        path = name.removesuffix(".weight")
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if name == "tok_embeddings.weight":
            setattr(parent, child, QuantizedEmbedding(weight))
            if model.output is None:  # tied: the head reads the same blocks
                model.output = QuantizedLinear(weight, float32_out=True)
        else:
            setattr(parent, child, QuantizedLinear(weight, float32_out=name == "output.weight"))
    for layer in model.layers:
        _fuse(layer.attention, ("wq", "wk", "wv"), "wqkv")
        _fuse(layer.feed_forward, ("w1", "w3"), "w13")
    if available():
        swap_kernel_modules(model)
    return rest


def _fuse(module: nn.Module, names: tuple[str, ...], fused: str) -> None:
    """Stack quantized layers of one block type into one (rows of blocks concatenate): one kernel call."""
    parts = [getattr(module, name) for name in names]
    if not all(isinstance(p, QuantizedLinear) for p in parts) or len({(p.qtype, p.in_features) for p in parts}) != 1:
        return  # e.g. Q4_K_M keeps some wv in Q6_K: those layers stay as three calls
    rows = sum(p.out_features for p in parts)
    stacked = QuantizedTensor(torch.cat([p.blocks for p in parts]), parts[0].qtype, (rows, parts[0].in_features))
    setattr(module, fused, QuantizedLinear(stacked))
    for name in names:
        delattr(module, name)
