"""The C kernels for a layer's norm, gate and attention (kernels/layer_ops.py, kernel_modules.py)
against model.py's reference modules: same results to float32 rounding, batch-invariant bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama_cli import kernels
from llama_cli.config import ModelConfig
from llama_cli.kernel_modules import KernelGatedSiLU, KernelRMSNorm, KernelRotaryAttention
from llama_cli.model import GatedSiLU, LayerCache, RMSNorm, RotaryAttention, rope_tables

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"the C kernels are not available here: {kernels.describe()}")

CONFIG = ModelConfig(dim=96, n_layers=1, n_heads=6, n_kv_heads=2, vocab_size=32, ffn_dim=160, context_length=64)


def modules() -> tuple[RotaryAttention, KernelRotaryAttention]:
    reference = RotaryAttention(CONFIG)
    fast = RotaryAttention(CONFIG)
    fast.__class__ = KernelRotaryAttention
    return reference, fast


def qkv(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as the thirds of one fused projection's output (rows one stride apart)."""
    g = torch.Generator().manual_seed(seed)
    hd = CONFIG.head_dim
    fused = torch.randn(B, T, (CONFIG.n_heads + 2 * CONFIG.n_kv_heads) * hd, generator=g)
    q, k, v = fused.split((CONFIG.n_heads * hd, CONFIG.n_kv_heads * hd, CONFIG.n_kv_heads * hd), dim=-1)
    return q, k, v


def caches(B: int, length: int = 40) -> tuple[LayerCache, LayerCache]:
    shape = (B, CONFIG.n_kv_heads, length, CONFIG.head_dim)
    a = LayerCache(*shape, dtype=torch.float32, device=torch.device("cpu"))
    b = LayerCache(*shape, dtype=torch.float32, device=torch.device("cpu"))
    return a, b


def test_rmsnorm_matches_reference() -> None:
    norm = RMSNorm(96, 1e-5)
    norm.weight.data = torch.randn(96)
    fast = RMSNorm(96, 1e-5)
    fast.weight.data = norm.weight.data
    fast.__class__ = KernelRMSNorm
    x = torch.randn(3, 5, 96)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), norm(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast(x[:, -1:]), norm(x[:, -1:]), rtol=1e-5, atol=1e-6)  # rows a stride apart
        assert torch.equal(fast(x)[1:2], fast(x[1:2]))  # a row's bits do not depend on the others


def test_gate_matches_reference() -> None:
    fast = GatedSiLU()
    fast.__class__ = KernelGatedSiLU
    both = torch.randn(2, 3, 320)
    gate, up = both.chunk(2, dim=-1)
    with torch.inference_mode():
        torch.testing.assert_close(fast(gate, up), F.silu(gate) * up, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B, start, T", [(1, 0, 1), (1, 7, 1), (2, 9, 1), (1, 12, 5), (2, 0, 3)])
def test_attention_matches_reference_and_writes_the_same_cache(B: int, start: int, T: int) -> None:
    reference, fast = modules()
    ref_cache, fast_cache = caches(B)
    cos, sin = rope_tables(CONFIG, 40, torch.device("cpu"))
    with torch.inference_mode():
        if start:  # a cached prefix, written by the reference path for both
            q, k, v = qkv(B, start, seed=1)
            reference(q, k, v, cos[:start], sin[:start], 0, None, ref_cache)
            reference(q, k, v, cos[:start], sin[:start], 0, None, fast_cache)
        q, k, v = qkv(B, T, seed=2)
        mask = torch.arange(start + T)[None, :] <= (start + torch.arange(T))[:, None] if T > 1 else None
        expected = reference(q, k, v, cos[start : start + T], sin[start : start + T], start, mask, ref_cache)
        got = fast(q, k, v, cos[start : start + T], sin[start : start + T], start, mask, fast_cache)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast_cache.k, ref_cache.k)  # rotary keys: the same products and sums as apply_rope
    assert torch.equal(fast_cache.v, ref_cache.v)


def test_attention_queries_are_the_bits_of_single_steps() -> None:
    # Prompt-lookup verification runs T queries in one pass; each must equal the decode step's bits.
    _, fast = modules()
    many, steps = caches(1)
    cos, sin = rope_tables(CONFIG, 40, torch.device("cpu"))
    q, k, v = qkv(1, 6, seed=3)
    with torch.inference_mode():
        together = fast(q, k, v, cos[:6], sin[:6], 0, None, many)
        alone = torch.cat(
            [fast(q[:, i : i + 1], k[:, i : i + 1], v[:, i : i + 1], cos[i : i + 1], sin[i : i + 1], i, None, steps) for i in range(6)],
            dim=1,
        )
    assert torch.equal(together, alone)


def test_attention_rows_at_their_own_positions() -> None:
    # The server: row b's single token at positions[b] of cache row rows[b], others untouched.
    reference, fast = modules()
    ref_cache, fast_cache = caches(3)
    cos, sin = rope_tables(CONFIG, 40, torch.device("cpu"))
    with torch.inference_mode():
        q, k, v = qkv(3, 10, seed=4)
        for cache in (ref_cache, fast_cache):
            reference(q, k, v, cos[:10], sin[:10], 0, None, cache)
        rows, positions = torch.tensor([2, 0]), torch.tensor([4, 9])
        q, k, v = qkv(2, 1, seed=5)
        mask = (torch.arange(10)[None, :] <= positions[:, None])[:, None, None]
        expected = reference(
            q, k, v, cos[positions][:, None, None], sin[positions][:, None, None], 0, mask, ref_cache, rows=rows, positions=positions
        )
        got = fast(
            q, k, v, cos[positions][:, None, None], sin[positions][:, None, None], 0, mask, fast_cache, rows=rows, positions=positions
        )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast_cache.k, ref_cache.k) and torch.equal(fast_cache.v, ref_cache.v)
