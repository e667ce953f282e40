"""The model core on tiny random weights: cached decoding equals full recomputation."""

from __future__ import annotations

import pytest
import torch

from llama_cli.config import ModelConfig, RopeScaling
from llama_cli.kv_cache import KVCache
from llama_cli.model import Transformer, rope_frequencies


def tiny_config(**overrides: object) -> ModelConfig:
    base = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 97, "ffn_dim": 128}
    base |= {"rope_theta": 10000.0, "context_length": 64}
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


def random_model(config: ModelConfig, dtype: torch.dtype = torch.float64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(config).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_cached_decode_matches_full_recompute(tied: bool, n_kv_heads: int) -> None:
    model = random_model(tiny_config(tie_embeddings=tied, n_kv_heads=n_kv_heads))
    tokens = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    cache = KVCache(model)
    cache.ensure(2, 32)
    with torch.inference_mode():
        full = model(tokens, 0, cache=cache)  # (B, T, vocab) in one pass
        prefill = model(tokens[:, :8], 0, cache=cache)
        steps = [model(tokens[:, t : t + 1], t, cache=cache) for t in range(8, 20)]
    incremental = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(incremental, full.to(incremental.dtype), atol=1e-9, rtol=1e-9)


def test_prefill_in_chunks_matches_one_pass() -> None:
    model = random_model(tiny_config())
    tokens = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))
    cache = KVCache(model)
    cache.ensure(1, 30)
    with torch.inference_mode():
        whole = cache.run(tokens.tolist())
        ids = tokens[0].tolist()
        chunks = torch.cat([cache.run([ids[:13]]), cache.run([ids[13:21]], 13), cache.run([ids[21:]], 21)], dim=1)
    torch.testing.assert_close(chunks, whole, atol=1e-9, rtol=1e-9)


def test_last_only_returns_final_position() -> None:
    model = random_model(tiny_config())
    tokens = torch.randint(0, 97, (1, 10))
    cache = KVCache(model)
    cache.ensure(1, 10)
    with torch.inference_mode():
        all_logits = model(tokens, 0, cache=cache)
        last = model(tokens, 0, cache=cache, last_only=True)
    assert last.shape == (1, 1, 97)
    torch.testing.assert_close(last[:, 0], all_logits[:, -1])


def test_positions_are_causal() -> None:
    """Changing a later token never changes earlier logits."""
    model = random_model(tiny_config())
    a = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 97
    cache = KVCache(model)
    cache.ensure(1, 12)
    with torch.inference_mode():
        la, lb = model(a, 0, cache=cache), model(b, 0, cache=cache)
    torch.testing.assert_close(la[:, :8], lb[:, :8])
    assert not torch.allclose(la[:, 8:], lb[:, 8:])


def test_matches_transformers_llama_on_random_weights() -> None:
    """Same weights in transformers' LlamaForCausalLM give the same logits (rotate-half layout)."""
    transformers = pytest.importorskip("transformers")
    config = tiny_config(rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=16))
    model = random_model(config, dtype=torch.float32)
    hf_config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=config.norm_eps, tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    ours = model.state_dict()
    mapping = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight", "lm_head.weight": "output.weight"}
    for i in range(2):
        for hf_name, name in {
            "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
            "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
            "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
        }.items():  # fmt: skip
            mapping[f"model.layers.{i}.{hf_name}.weight"] = f"layers.{i}.{name}.weight"
    hf.load_state_dict({k: ours[v] for k, v in mapping.items()}, strict=True)
    tokens = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(4))
    cache = KVCache(model)
    cache.ensure(1, 40)
    with torch.inference_mode():
        expected = hf(tokens).logits
        got = model(tokens, 0, cache=cache)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_rope_scaling_changes_only_low_frequencies() -> None:
    plain = rope_frequencies(64, 500000.0, None)
    scaled = rope_frequencies(64, 500000.0, RopeScaling(factor=8.0, original_context=8192))
    assert torch.equal(plain[:4], scaled[:4])  # short wavelengths are kept
    torch.testing.assert_close(scaled[-1], plain[-1] / 8)  # the longest is slowed by the factor


def test_cache_bounds_are_enforced() -> None:
    model = random_model(tiny_config())
    cache = KVCache(model)
    cache.ensure(1, 8)
    with pytest.raises(ValueError, match="exceed the cache"):
        model(torch.zeros(1, 9, dtype=torch.long), 0, cache=cache)
    with pytest.raises(ValueError, match="context length"):
        cache.ensure(1, 65)


def test_fast_forms_of_the_maths_are_bit_identical() -> None:
    """RMSNorm's fused call and RoPE's roll form give exactly the textbook formulas' floats."""
    from llama_cli.model import RMSNorm, apply_rope, rope_tables

    torch.manual_seed(0)
    for dim in (64, 576, 2048):
        norm = RMSNorm(dim, 1e-5)
        norm.weight.data = torch.randn(dim)
        x = torch.randn(2, 5, dim) * 3
        textbook = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
        assert torch.equal(norm(x), textbook)
    config = ModelConfig(dim=128, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=10, ffn_dim=8, rope_theta=500000.0)
    cos, signed_sin = rope_tables(config, 16, torch.device("cpu"))
    angles = torch.outer(torch.arange(16, dtype=torch.float32), 1.0 / (500000.0 ** (torch.arange(0, 64, 2).float() / 64)))
    sin = torch.cat((angles, angles), dim=-1).sin()
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1, 2, 16, 64).to(dtype)
        textbook = (q * cos + torch.cat((-q[..., 32:], q[..., :32]), dim=-1) * sin).to(dtype)
        assert torch.equal(apply_rope(q, cos, signed_sin), textbook)
