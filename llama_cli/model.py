"""The LLaMA decoder in plain PyTorch: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Pure computation: no file I/O, no printing, no device literals, no sampling. Weights use one
internal naming scheme (Meta's: `tok_embeddings`, `layers.N.attention.wq`, ...); the loaders map
every format into it. Rotary embeddings use the "rotate half" layout of Hugging Face checkpoints;
the GGUF and Meta loaders undo their interleaved q/k row order before the weights reach here.

References: Meta's llama/model.py, pytorch-labs/gpt-fast model.py, transformers' modeling_llama.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, RopeScaling

Rows = torch.Tensor | None  # `rows=` and `positions=` of continuous batching (Transformer.forward)
ROW_BY_ROW_ATTENTION = 16  # queries after a cached prefix up to which attention runs one query at a time


class LayerCache:
    """One layer's preallocated keys and values for every position up to `length`.

    Positions are given by the caller; this never tracks a "current length" of its own. Allocated,
    grown and copied only by its owner, kv_cache.KVCache.
    """

    def __init__(self, batch: int, n_kv_heads: int, length: int, head_dim: int, *, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, n_kv_heads, length, head_dim)  # (B, n_kv_heads, S, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(
        self, start_pos: int, k: torch.Tensor, v: torch.Tensor, *, rows: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_heads, T, head_dim) at start_pos; return keys/values for 0..start_pos+T.

        `rows` (B,) picks the cache row of each sequence (default 0..B-1); `positions` (B,) puts
        row b's single token (T == 1) at positions[b]. Keys then run to the furthest position
        written; the caller masks each row's keys beyond its own position.
        """
        if rows is not None or positions is not None:
            rows = torch.arange(k.shape[0], device=k.device) if rows is None else rows
            if positions is None:
                end = start_pos + k.shape[2]
                self.k[rows, :, start_pos:end], self.v[rows, :, start_pos:end] = k, v
            else:
                end = int(positions.max()) + 1
                self.k[rows, :, positions], self.v[rows, :, positions] = k[:, :, 0], v[:, :, 0]  # (B, n_kv_heads, head_dim)
            return self.k[rows, :, :end], self.v[rows, :, :end]  # (B, n_kv_heads, end, head_dim), gathered
        end = start_pos + k.shape[2]
        self.k[: k.shape[0], :, start_pos:end] = k
        self.v[: v.shape[0], :, start_pos:end] = v
        return self.k[: k.shape[0], :, :end], self.v[: v.shape[0], :, :end]


class CacheView(Protocol):
    """What a forward pass reads of the KV cache it writes into (kv_cache.KVCache, its owner, is
    the one implementation; kv_cache.py imports this module, so the model names these instead)."""

    @property
    def batch(self) -> int: ...  # rows

    @property
    def length(self) -> int: ...  # positions per row

    @property
    def layers(self) -> Sequence[LayerCache]: ...  # one per transformer layer

    @property
    def rope_cos(self) -> torch.Tensor: ...  # (length, head_dim)

    @property
    def rope_sin(self) -> torch.Tensor: ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused call instead of six; bit-identical to the lines below in float32 (checked in tests).
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # Normalise in float32 whatever the weights' dtype, as the reference implementations do.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,), with Llama-3.1 scaling applied when configured."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
    low_freq_wavelen = scaling.original_context / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, interpolated, scaled)


def rope_tables(config: ModelConfig, max_seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin, each (max_seq_len, head_dim), in float32 (see `apply_rope` for the sign)."""
    inv_freq = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).to(device)
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)  # (S, head_dim), "rotate half" layout
    sin = angles.sin()
    sin[:, : config.head_dim // 2] *= -1  # rotate_half's negation, moved from x onto the table
    return angles.cos(), sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by position; cos/sin are (T, head_dim), or (B, 1, 1, head_dim) per row.

    The "rotate half" form x * cos + cat(-x2, x1) * sin, written as x * cos + roll(x) * sin' with
    sin' = cat(-sin1, sin2) from `rope_tables`: the same products exactly (negation is exact),
    in four calls instead of eight (a decode step runs this 2 x n_layers times).
    """
    return (x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin).to(x.dtype)


class RotaryAttention(nn.Module):
    """Attention between the projections: rotary embeddings, the KV cache, softmax(q k^T / sqrt(d)) v.

    q (B, T, n_heads*head_dim) and k, v (B, T, n_kv_heads*head_dim) in, (B, T, n_heads*head_dim) out.
    A module of its own so that quantized.py can swap in one C call for the short passes over a
    cache (kernel_modules.py), as it swaps in the linear layers.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim

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
        B, T, _ = q.shape
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_heads, T, head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(start_pos, k, v, **where)  # (B, n_kv_heads, start_pos+T, head_dim)
        elif start_pos:
            raise ValueError("start_pos > 0 needs a KV cache")
        causal = cache is None and T > 1  # no cache: the sequence is the whole context
        gqa = self.n_kv_heads != self.n_heads
        if cache is not None and start_pos > 0 and 1 < T <= ROW_BY_ROW_ATTENTION:
            # A few queries after a cached prefix (prompt-lookup verification, a short chat turn): one
            # query at a time, so each row's attention is the same bits as a one-token decode step
            # (a masked multi-query pass sums in another order), and verified drafts repeat plain decoding.
            y = torch.cat(
                [
                    F.scaled_dot_product_attention(q[:, :, i : i + 1], k[:, :, :end], v[:, :, :end], enable_gqa=gqa)
                    for i, end in enumerate(range(start_pos + 1, start_pos + T + 1))  # query i sees keys 0..start_pos+i
                ],
                dim=2,
            )  # (B, n_heads, T, head_dim)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        return y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, n_heads*head_dim)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        # wq, wk, wv stacked into one matmul (quantized.py fuses them when they share a block type):
        # one kernel call instead of three. The split below is the only difference.
        self.wqkv: nn.Module | None = None
        self.attend = RotaryAttention(config)  # rotary embeddings, cache, attention

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int,
        mask: torch.Tensor | None,
        cache: LayerCache | None,
        **where: Rows,
    ) -> torch.Tensor:
        if self.wqkv is not None:
            kv_dim = self.n_kv_heads * self.head_dim
            q, k, v = self.wqkv(x).split_with_sizes((self.n_heads * self.head_dim, kv_dim, kv_dim), dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        return self.wo(self.attend(q, k, v, cos, sin, start_pos, mask, cache, **where))


class GatedSiLU(nn.Module):
    """SwiGLU's gate, silu(gate) * up: a module of its own so that quantized.py can swap in one C call."""

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return F.silu(gate) * up


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is the gate, w3 the up projection, w2 the down."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w13: nn.Module | None = None  # w1 and w3 stacked (quantized.py), as Attention.wqkv
        self.gate = GatedSiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, up = self.w13(x).chunk(2, dim=-1)
            return self.w2(self.gate(gate, up))
        return self.w2(self.gate(self.w1(x), self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int,
        mask: torch.Tensor | None,
        cache: LayerCache | None,
        **where: Rows,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, start_pos, mask, cache, **where)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        *,
        cache: CacheView | None,
        last_only: bool = False,
        rows: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) in float32 for tokens (B, T) placed at positions start_pos..start_pos+T-1.

        With `last_only`, only the final position's logits are computed (B, 1, vocab).
        With a `cache` (kv_cache.KVCache, which calls this from its `run`), keys and values are
        written into it and nothing before start_pos is recomputed. With `cache=None` (training,
        scoring), `tokens` are whole sequences from position 0 under plain causal attention;
        nothing is stored.

        Continuous batching (serve/scheduler.py): `rows` (B,) names each sequence's cache row
        (default 0..B-1), and `positions` (B,) places each row's single token (T == 1) at its own
        position instead of start_pos, each row attending to its own keys 0..positions[b].
        """
        B, T = tokens.shape
        end = start_pos + T
        mask = None
        if cache is None:
            if start_pos or rows is not None or positions is not None:
                raise ValueError("start_pos > 0, rows and positions need a KV cache")
            if T > self.config.context_length:
                raise ValueError(f"{T} positions exceed the model's context length {self.config.context_length}")
            cos, sin = rope_tables(self.config, T, tokens.device)
        elif positions is not None:
            end = int(positions.max()) + 1
            if T != 1 or end > cache.length:
                raise ValueError(f"positions take one token per row (got {T}) below the cache's {cache.length} positions (got {end})")
            cos, sin = cache.rope_cos[positions][:, None, None], cache.rope_sin[positions][:, None, None]  # (B, 1, 1, head_dim)
            mask = (torch.arange(end, device=tokens.device)[None, :] <= positions[:, None])[:, None, None]  # (B, 1, 1, end)
        else:
            if end > cache.length or (B > cache.batch and rows is None):
                raise ValueError(f"positions up to {end} with batch {B} exceed the cache ({cache.length} positions, batch {cache.batch})")
            cos, sin = cache.rope_cos[start_pos:end], cache.rope_sin[start_pos:end]
            if T > 1:  # query i (at start_pos+i) sees keys 0..start_pos+i; one query sees the whole prefix
                key_pos = torch.arange(end, device=tokens.device)
                mask = key_pos[None, :] <= (start_pos + torch.arange(T, device=tokens.device))[:, None]  # (T, end)
        x = self.tok_embeddings(tokens).to(self.norm.weight.dtype)  # (B, T, dim); a quantized table gives float32
        layer_caches = [None] * len(self.layers) if cache is None else cache.layers
        for layer, layer_cache in zip(self.layers, layer_caches):
            x = layer(x, cos, sin, start_pos, mask, layer_cache, rows=rows, positions=positions)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        logits = F.linear(x, self.tok_embeddings.weight) if self.output is None else self.output(x)
        return logits.float()
