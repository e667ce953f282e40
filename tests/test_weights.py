"""Weight loading: one tiny random LLaMA written as GGUF (float and quantized), Hugging Face
safetensors (single and sharded), a Meta checkpoint and our native folder must all load into the
same internal weights and give the same logits; the GGUF cache must be used and never half-written;
broken files must fail with ModelNotFoundError / ModelFormatError and nothing else.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import random
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import sentencepiece
import torch
from gguf.constants import GGMLQuantizationType as Q
from safetensors.torch import save_file

from llama_cli.config import ModelConfig, RopeScaling
from llama_cli.errors import LlamaError, ModelFormatError, ModelNotFoundError
from llama_cli.kv_cache import KVCache
from llama_cli.model import Transformer, rope_frequencies
from llama_cli.tokenizer import tokenizer_from_gguf
from llama_cli.weights import CacheWarning, Checkpoint, cache_root, load_checkpoint, save_native
from llama_cli.weights import gguf_info as gguf_module  # read_model_info: what the cache spares
from llama_cli.weights.common import expected_shapes
from llama_cli.weights.quantized import QuantizedTensor, dense

SESSION_CACHE = os.environ.get("LLAMA_CACHE")  # conftest's per-session cache, for the real model
TINY = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, ffn_dim=128, rope_theta=10000.0, context_length=64)
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TOKENS = torch.tensor([[5, 17, 260, 3, 99, 280, 42, 7, 150, 299]])


# ---------------------------------------------------------------- building tiny checkpoints


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: (1 + 0.1 * torch.randn(shape, generator=g)) if len(shape) == 1 else 0.15 * torch.randn(shape, generator=g)
        for name, shape in expected_shapes(config).items()
    }


def logits(config: ModelConfig, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    model = Transformer(config)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    cache = KVCache(model)
    cache.ensure(1, 32)
    with torch.inference_mode():
        return model(TOKENS, 0, cache=cache)


def interleave_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rotate-half rows -> interleaved pairs, exactly as llama.cpp's convert_hf_to_gguf.py permutes."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def rotate_half_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of interleave_qk (written independently of the loader's)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 byte values (byte-level BPE vocabularies use them)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def tokenizer_metadata() -> dict[str, Any]:
    """A 300-token byte-level BPE: 3 control tokens, 256 bytes, 41 merges of common letters."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # 0 unk/eot, 1 bos, 2 eos
    byte_tokens = list(bytes_to_unicode().values())
    letters = "Ġetaoinshr"
    pairs = [(a, b) for a in letters for b in letters if a + b not in byte_tokens][:41]
    tokens = specials + byte_tokens + [a + b for a, b in pairs]
    assert len(tokens) == 300 and len(set(tokens)) == 300
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * 3 + [1] * 297,
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in pairs],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
    }


GGUF_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
}


def gguf_name(internal: str) -> str:
    if internal in GGUF_NAMES:
        return GGUF_NAMES[internal]
    _, i, rest = internal.split(".", 2)
    return f"blk.{i}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"


def write_gguf(
    path: Path,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    *,
    qtype: Q = Q.F32,
    arch: str = "llama",
    raw: dict[str, tuple[np.ndarray, Q]] | None = None,
    extra: Callable[[gguf.GGUFWriter], None] | None = None,
    ffn_dim: int | None = None,
) -> Path:
    """A GGUF as llama.cpp writes one: permuted q/k, 2-D tensors as `qtype`, norms F32.

    `raw` replaces tensors by (bytes, type) as stored (already permuted), for types gguf cannot quantize."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(ffn_dim or config.ffn_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    meta = tokenizer_metadata()
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    if extra:
        extra(writer)
    for name, tensor in weights.items():
        if name.endswith("wq.weight"):
            tensor = interleave_qk(tensor, config.n_heads)
        elif name.endswith("wk.weight"):
            tensor = interleave_qk(tensor, config.n_kv_heads)
        if raw and name in raw:
            data, kind = raw[name]
            writer.add_tensor(gguf_name(name), data, raw_dtype=kind)
        elif tensor.dim() == 2 and qtype != Q.F32:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(tensor.numpy(), qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def quantized_reference(weights: dict[str, torch.Tensor], qtype: Q) -> dict[str, torch.Tensor]:
    """What a loader should give back for `weights` stored as `qtype` (quantization is row-wise, so
    the q/k row permutation does not change it)."""
    out = {}
    for name, w in weights.items():
        if w.dim() == 2 and qtype != Q.F32:
            w = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype).astype(np.float32))
        out[name] = w
    return out


def write_hf(folder: Path, config: ModelConfig, weights: dict[str, torch.Tensor], *, shards: int = 1, **config_overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
        "attention_norm": "input_layernorm",
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w2": "mlp.down_proj",
        "feed_forward.w3": "mlp.up_proj",
    }

    def hf_name(internal: str) -> str:
        if internal in table:
            return table[internal]
        _, i, rest = internal.split(".", 2)
        return f"model.layers.{i}.{table[rest.removesuffix('.weight')]}.weight"

    tensors = {hf_name(k): v.contiguous() for k, v in weights.items()}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        names = sorted(tensors)
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, str(folder / file))
            weight_map.update({n: file for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "intermediate_size": config.ffn_dim,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.context_length,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        **config_overrides,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    tokenizer_from_gguf(tokenizer_metadata()).save(folder)
    (folder / "tokenizer_special.json").unlink()  # a real HF folder has only tokenizer.json and configs
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "add_bos_token": False}))
    return folder


def sentencepiece_model() -> bytes:
    text = ["the quick brown fox jumps over the lazy dog", "hello world this is a tiny corpus", "pack my box with five dozen jugs"] * 20
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=out, vocab_size=120, model_type="bpe", hard_vocab_limit=False, minloglevel=2
    )
    return out.getvalue()


def write_meta(folder: Path, config: ModelConfig, weights: dict[str, torch.Tensor], *, shards: int = 1) -> Path:
    """A Meta checkpoint: interleaved q/k, model-parallel shards split as fairscale did."""
    folder.mkdir(parents=True, exist_ok=True)
    state = dict(weights)
    for i in range(config.n_layers):
        state[f"layers.{i}.attention.wq.weight"] = interleave_qk(state[f"layers.{i}.attention.wq.weight"], config.n_heads)
        state[f"layers.{i}.attention.wk.weight"] = interleave_qk(state[f"layers.{i}.attention.wk.weight"], config.n_kv_heads)
    state["rope.freqs"] = torch.ones(config.head_dim // 2)  # LLaMA 1/2 saved this buffer
    for s in range(shards):
        part = {}
        for name, t in state.items():
            if t.dim() == 1:
                part[name] = t.clone()
            elif name.endswith(("wo.weight", "w2.weight", "tok_embeddings.weight")):
                part[name] = t.chunk(shards, dim=1)[s].clone()
            else:
                part[name] = t.chunk(shards, dim=0)[s].clone()
        torch.save(part, folder / f"consolidated.{s:02d}.pth")
    params = {"dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "vocab_size": -1}
    params |= {"multiple_of": 32, "norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "max_seq_len": config.context_length}
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "tokenizer.model").write_bytes(sentencepiece_model())
    return folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_weights(TINY)


@pytest.fixture(scope="module")
def reference(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return logits(TINY, weights)


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].shape == tensor.shape, name
        assert torch.equal(dense(got[name]).float(), dense(tensor).float()), name


# ---------------------------------------------------------------- every format, same model


@pytest.mark.parametrize("fmt", ["gguf", "hf", "hf-sharded", "meta", "meta-2-shards", "native"])
def test_every_format_gives_the_same_model(fmt: str, tmp_path: Path, weights: dict[str, torch.Tensor], reference: torch.Tensor) -> None:
    if fmt == "gguf":
        path, kind = write_gguf(tmp_path / "tiny.gguf", TINY, weights), "gguf"
    elif fmt.startswith("hf"):
        path, kind = write_hf(tmp_path / "hf", TINY, weights, shards=3 if fmt == "hf-sharded" else 1), "huggingface"
    elif fmt.startswith("meta"):
        path, kind = write_meta(tmp_path / "meta", TINY, weights, shards=2 if fmt == "meta-2-shards" else 1), "meta"
    else:
        hf = load_checkpoint(write_hf(tmp_path / "hf", TINY, weights))
        path, kind = tmp_path / "native", "native"
        save_native(path, hf.config, hf.weights, hf.tokenizer, hf.chat_template)
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == kind and checkpoint.source == path and checkpoint.quantization == "F32"
    assert checkpoint.config == TINY
    assert_same_weights(checkpoint.weights, weights)
    torch.testing.assert_close(logits(checkpoint.config, checkpoint.weights), reference, atol=1e-5, rtol=0)
    if kind != "meta":  # the Meta folder has its own sentencepiece vocabulary
        assert checkpoint.tokenizer.special.bos_id == 1 and checkpoint.tokenizer.special.eos_id == 2
        assert checkpoint.tokenizer.special.add_bos is False
        assert checkpoint.chat_template == TEMPLATE
        assert checkpoint.tokenizer.encode("<|im_start|>hi", parse_special=True)[0] == 1  # <|im_start|>
    else:
        assert checkpoint.tokenizer.special.add_bos is True and checkpoint.chat_template is None


def test_a_file_inside_a_folder_loads_the_folder(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    folder = write_hf(tmp_path / "hf", TINY, weights)
    assert load_checkpoint(folder / "config.json").source == folder
    assert load_checkpoint(folder / "model.safetensors").format == "huggingface"
    gguf_folder = tmp_path / "one-gguf"
    gguf_folder.mkdir()
    write_gguf(gguf_folder / "m.gguf", TINY, weights)
    assert load_checkpoint(gguf_folder).source == gguf_folder / "m.gguf"


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.BF16])
def test_quantized_gguf_equals_gguf_dequantization(qtype: Q, tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    checkpoint = load_checkpoint(write_gguf(tmp_path / f"tiny-{qtype.name}.gguf", TINY, weights, qtype=qtype))
    assert checkpoint.quantization == qtype.name
    want = quantized_reference(weights, qtype)
    assert_same_weights(checkpoint.weights, want)
    wq = checkpoint.weights["layers.0.attention.wq.weight"]
    assert isinstance(wq, QuantizedTensor) and wq.qtype == qtype.name  # kept as stored: the file's blocks
    dequantized = {name: dense(t) for name, t in checkpoint.weights.items()}
    torch.testing.assert_close(logits(checkpoint.config, dequantized), logits(TINY, want), atol=1e-5, rtol=0)


def k_quant_blocks(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (any bits are valid) with their float16 scales set to small finite values."""
    block, size = gguf.constants.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale_bytes = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}[qtype]  # offsets of d (and dmin)
    for offset in scale_bytes:
        scales = rng.uniform(1e-3, 2e-2, size=(rows, cols // block)).astype(np.float16)
        data[:, :, offset : offset + 2] = scales.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, cols // block * size)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quant_gguf_equals_gguf_dequantization(qtype: Q, tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, dim=256, n_layers=1, ffn_dim=512, head_dim=64)  # rows of whole 256-blocks
    weights = random_weights(config)
    rng = np.random.default_rng(0)
    raw, want = {}, dict(weights)
    for name, w in weights.items():
        if w.dim() == 2:
            data = k_quant_blocks(w.shape[0], w.shape[1], qtype, rng)
            raw[name] = (data, qtype)
            stored = torch.from_numpy(gguf.quants.dequantize(data, qtype).astype(np.float32))
            heads = config.n_heads if "wq" in name else config.n_kv_heads if "wk" in name else 0
            want[name] = rotate_half_qk(stored, heads) if heads else stored  # the bytes are stored permuted
    checkpoint = load_checkpoint(write_gguf(tmp_path / "k.gguf", config, weights, raw=raw))
    assert checkpoint.quantization == qtype.name and checkpoint.config == config
    assert_same_weights(checkpoint.weights, want)
    assert all(torch.isfinite(dense(w)).all() for w in checkpoint.weights.values())


def test_hf_config_variants(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """transformers 5 `rope_parameters`, a Llama 3.1 rope_scaling, and a tied model that also stores lm_head."""
    tied = {k: v for k, v in weights.items() if k != "output.weight"}
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    folder = write_hf(
        tmp_path / "hf",
        dataclasses.replace(TINY, tie_embeddings=True),
        {**tied, "output.weight": tied["tok_embeddings.weight"].clone()},
        rope_theta=None,
        rope_parameters=rope,
    )
    config = json.loads((folder / "config.json").read_text())
    del config["rope_theta"]
    (folder / "config.json").write_text(json.dumps(config))
    checkpoint = load_checkpoint(folder)
    assert checkpoint.config.rope_theta == 500000.0 and checkpoint.config.tie_embeddings
    assert checkpoint.config.rope_scaling == RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=32)
    assert "output.weight" not in checkpoint.weights


@pytest.mark.parametrize(
    "scaling",
    [
        RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192),  # Llama 3.1: one blended frequency here
        RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=32.0, original_context=8192),  # two blended: fitted
        RopeScaling(factor=4.0, low_freq_factor=2.0, high_freq_factor=6.0, original_context=100),  # one blended
        RopeScaling(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.1, original_context=1000),  # none blended: a step
    ],
)
def test_gguf_rope_freqs_tensor_becomes_rope_scaling(scaling: RopeScaling, tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """llama.cpp stores Llama 3.1 scaling as rope_freqs.weight (per-frequency divisors); the loaded
    config must reproduce those frequencies exactly (theta 500000 puts several in the blended band)."""
    config = dataclasses.replace(TINY, rope_theta=500000.0)
    base = rope_frequencies(config.head_dim, config.rope_theta, None)
    divisors = (base / rope_frequencies(config.head_dim, config.rope_theta, scaling)).numpy().astype(np.float32)
    path = write_gguf(tmp_path / "scaled.gguf", config, weights, extra=lambda w: w.add_tensor("rope_freqs.weight", divisors))
    loaded = load_checkpoint(path).config.rope_scaling
    assert loaded is not None and loaded.factor == pytest.approx(scaling.factor)
    torch.testing.assert_close(
        rope_frequencies(config.head_dim, config.rope_theta, loaded), base / torch.from_numpy(divisors), rtol=1e-5, atol=0
    )
    bogus = write_gguf(
        tmp_path / "bogus.gguf",
        config,
        weights,
        extra=lambda w: w.add_tensor("rope_freqs.weight", np.linspace(1, 3, 8)[::-1].astype(np.float32)),
    )
    with pytest.raises(ModelFormatError, match="rope_freqs"):
        load_checkpoint(bogus)


def test_the_default_model_loads(default_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if SESSION_CACHE:
        monkeypatch.setenv("LLAMA_CACHE", SESSION_CACHE)  # share the converted model with the other tests
    checkpoint = load_checkpoint(default_model_path)
    c = checkpoint.config
    assert (c.n_layers, c.dim, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 576, 1536, 9, 3, 64)
    assert (c.rope_theta, c.norm_eps, c.context_length, c.vocab_size, c.tie_embeddings) == (100000.0, 1e-5, 8192, 49152, True)
    assert checkpoint.format == "gguf" and checkpoint.quantization == "Q4_1" and checkpoint.source == default_model_path
    assert set(checkpoint.weights) == set(expected_shapes(c)) and "output.weight" not in checkpoint.weights
    special = checkpoint.tokenizer.special
    assert (special.bos_id, special.eos_id, special.add_bos) == (1, 2, False)
    assert checkpoint.chat_template is not None and "<|im_start|>" in checkpoint.chat_template


# ---------------------------------------------------------------- the GGUF cache


def count_conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Calls of the slow metadata reading that the cache saves."""
    calls: list[Path] = []
    real = gguf_module.read_model_info

    def spy(path: Path, header: Any) -> Any:
        calls.append(path)
        return real(path, header)

    monkeypatch.setattr(gguf_module, "read_model_info", spy)
    return calls


def forbid_gguf_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the GGUF was opened although a cache entry exists")

    monkeypatch.setattr(gguf, "GGUFReader", boom)
    monkeypatch.setattr(gguf_module, "read_model_info", boom)


def test_second_load_comes_from_the_cache(
    tmp_path: Path, private_cache: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", TINY, weights, qtype=Q.Q4_1)
    first = load_checkpoint(path)
    assert cache_root() == private_cache and len(list((private_cache / "gguf").iterdir())) == 1
    with monkeypatch.context() as m:
        forbid_gguf_reading(m)
        second = load_checkpoint(path)
    assert (second.format, second.source, second.quantization) == ("gguf", path, "Q4_1")
    assert second.config == first.config and second.chat_template == first.chat_template == TEMPLATE
    assert second.tokenizer.special == first.tokenizer.special
    assert second.tokenizer.encode("hello there") == first.tokenizer.encode("hello there")
    assert_same_weights(second.weights, first.weights)
    assert_same_weights(second.weights, quantized_reference(weights, Q.Q4_1))


def test_a_changed_gguf_is_converted_again(tmp_path: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_conversions(monkeypatch)
    path = write_gguf(tmp_path / "tiny.gguf", TINY, weights)
    load_checkpoint(path)
    load_checkpoint(path)
    assert len(calls) == 1
    other = random_weights(TINY, seed=1)
    write_gguf(path, TINY, other)
    os.utime(path, ns=(1, 1_000_000_000))  # a different mtime even on a coarse clock
    assert_same_weights(load_checkpoint(path).weights, other)
    assert len(calls) == 2
    load_checkpoint(path, cache=False)
    assert len(calls) == 3


def test_no_cache_writes_nothing(tmp_path: Path, private_cache: Path, weights: dict[str, torch.Tensor]) -> None:
    load_checkpoint(write_gguf(tmp_path / "tiny.gguf", TINY, weights), cache=False)
    assert not private_cache.exists()


def test_unwritable_cache_root_loads_uncached_with_a_warning(
    tmp_path: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LLAMA_CACHE", str(blocker / "cache"))  # root cannot chmod its way out; a file in the path stops it
    path = write_gguf(tmp_path / "tiny.gguf", TINY, weights)
    with pytest.warns(CacheWarning, match="cannot cache"):
        checkpoint = load_checkpoint(path)
    assert_same_weights(checkpoint.weights, weights)


def test_full_disk_leaves_no_partial_entry(
    tmp_path: Path, private_cache: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("llama_cli.tokenizer.BPETokenizer.save", disk_full)
    monkeypatch.setattr("llama_cli.tokenizer.SentencePieceTokenizer.save", disk_full)
    path = write_gguf(tmp_path / "tiny.gguf", TINY, weights)
    with pytest.warns(CacheWarning, match="No space left"):
        checkpoint = load_checkpoint(path)
    assert_same_weights(checkpoint.weights, weights)
    assert list((private_cache / "gguf").iterdir()) == []  # the temporary folder was removed


def test_leftover_temp_folders_are_never_used(
    tmp_path: Path, private_cache: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", TINY, weights)
    load_checkpoint(path)
    (entry,) = (private_cache / "gguf").iterdir()
    entry.rename(entry.parent / f".tmp-{entry.name}-crashed")  # a complete copy, but under a temporary name
    calls = count_conversions(monkeypatch)
    assert_same_weights(load_checkpoint(path).weights, weights)
    assert len(calls) == 1 and entry.is_dir()


@pytest.mark.parametrize("damaged", ["llama.json", "chat_template.jinja"])  # cut short; not UTF-8 (was an internal error every run)
def test_a_damaged_entry_is_rebuilt(
    damaged: str, tmp_path: Path, private_cache: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", TINY, weights)
    load_checkpoint(path)
    (entry,) = (private_cache / "gguf").iterdir()
    file = entry / damaged
    file.write_bytes(file.read_bytes()[:20] if damaged == "llama.json" else b"\xff\xfe" + file.read_bytes())
    with pytest.warns(CacheWarning, match="damaged"):
        assert_same_weights(load_checkpoint(path).weights, weights)
    with monkeypatch.context() as m:
        forbid_gguf_reading(m)
        assert_same_weights(load_checkpoint(path).weights, weights)


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "a"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("LLAMA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "llama"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "llama"


# ---------------------------------------------------------------- broken inputs


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"looked for llama\.json .*config\.json.*params\.json.*gguf"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFormatError, match="not a model file"):
        load_checkpoint(tmp_path / "notes.txt")


def gguf_bytes(tmp_path: Path, weights: dict[str, torch.Tensor]) -> bytes:
    return write_gguf(tmp_path / "good.gguf", TINY, weights).read_bytes()


def load_bytes(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Checkpoint:
    path = tmp_path / name
    path.write_bytes(data)
    return load_checkpoint(path, cache=False)


def test_truncated_gguf(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    data = gguf_bytes(tmp_path, weights)
    for cut in (0, 3, 4, 12, 23, 30, 200, 3000, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelFormatError, match="truncated|too short|corrupt"):
            load_bytes(tmp_path, data[:cut])


def test_bad_magic_and_version(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    data = gguf_bytes(tmp_path, weights)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load_bytes(tmp_path, b"GGML" + data[4:])
    with pytest.raises(ModelFormatError, match="version 7"):
        load_bytes(tmp_path, data[:4] + struct.pack("<I", 7) + data[8:])


@pytest.mark.parametrize(
    "offset, value", [(8, 2**62), (16, 2**62), (8, 10**6), (24, 2**40)], ids=["tensors", "kvs", "tensors-1e6", "key-length"]
)
def test_absurd_header_counts(offset: int, value: int, tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    data = bytearray(gguf_bytes(tmp_path, weights))
    data[offset : offset + 8] = struct.pack("<Q", value)
    with pytest.raises(ModelFormatError, match="corrupt|truncated"):
        load_bytes(tmp_path, bytes(data))


def test_absurd_array_length_fails_fast(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """gguf's reader would loop over 2**60 claimed vocabulary entries; the header check refuses first."""
    data = bytearray(gguf_bytes(tmp_path, weights))
    at = data.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4  # value type, item type
    assert struct.unpack_from("<Q", data, at)[0] == 300
    data[at : at + 8] = struct.pack("<Q", 2**60)
    with pytest.raises(ModelFormatError, match="array of"):
        load_bytes(tmp_path, bytes(data))


def test_tensor_data_past_the_end(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    data = bytearray(gguf_bytes(tmp_path, weights))
    name = b"output.weight"
    at = data.index(name + struct.pack("<I", 2)) + len(name) + 4 + 16 + 4  # n_dims, two dims, type -> offset
    data[at : at + 8] = struct.pack("<Q", len(data))
    with pytest.raises(ModelFormatError, match="past the end"):
        load_bytes(tmp_path, bytes(data))


def test_other_architecture(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ModelFormatError, match="'gpt2'"):
        load_checkpoint(write_gguf(tmp_path / "gpt2.gguf", TINY, weights, arch="gpt2"))


@pytest.mark.parametrize("qtype", [Q.Q8_1])
def test_unsupported_quant_type(qtype: Q, tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    w = weights["layers.0.attention.wv.weight"]
    block, size = gguf.constants.GGML_QUANT_SIZES[qtype]
    data = np.zeros((w.shape[0], w.shape[1] // block * size), dtype=np.uint8)
    path = write_gguf(tmp_path / "odd.gguf", TINY, weights, raw={"layers.0.attention.wv.weight": (data, qtype)})
    with pytest.raises(ModelFormatError, match=f"tensor type {qtype.name} is not supported"):
        load_checkpoint(path)


def test_config_and_tensors_disagree(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ModelFormatError, match=r"feed_forward\.w1\.weight has shape \(128, 64\) but the config implies \(96, 64\)"):
        load_checkpoint(write_gguf(tmp_path / "tiny.gguf", TINY, weights, ffn_dim=96))
    with pytest.raises(ModelFormatError, match="config implies"):
        load_checkpoint(write_hf(tmp_path / "hf", TINY, weights, intermediate_size=96))
    partial = {k: v for k, v in weights.items() if k != "layers.1.ffn_norm.weight"}
    with pytest.raises(ModelFormatError, match=r"missing tensors \['layers\.1\.ffn_norm\.weight'\]"):
        load_checkpoint(write_hf(tmp_path / "hf2", TINY, partial))
    with pytest.raises(ModelFormatError, match="'mistral' is not supported"):
        load_checkpoint(write_hf(tmp_path / "hf3", TINY, weights, model_type="mistral", architectures=["MistralForCausalLM"]))


def test_absurd_config_values(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Four billion layers, zero heads, an infinite width: refused, not looped over or divided by."""
    data = bytearray(gguf_bytes(tmp_path, weights))
    at = data.index(b"llama.block_count") + len("llama.block_count") + 4  # after the value type
    data[at : at + 4] = struct.pack("<I", 2**32 - 1)
    with pytest.raises(ModelFormatError, match="4294967295 layers"):
        load_bytes(tmp_path, bytes(data))
    for i, bad in enumerate(
        [{"num_key_value_heads": 3}, {"num_attention_heads": 0}, {"hidden_size": float("inf")}, {"hidden_size": "wide"}]
    ):
        with pytest.raises(ModelFormatError, match="impossible model shape"):
            load_checkpoint(write_hf(tmp_path / f"hf{i}", TINY, weights, **bad))


def test_truncated_safetensors_and_pth(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    folder = write_hf(tmp_path / "hf", TINY, weights)
    data = (folder / "model.safetensors").read_bytes()
    for cut in (0, 7, 100, len(data) - 1):
        (folder / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match="truncated or corrupt"):
            load_checkpoint(folder)
    meta = write_meta(tmp_path / "meta", TINY, weights)
    shard = meta / "consolidated.00.pth"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_checkpoint(meta)


def test_random_header_damage_raises_only_model_errors(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Overwrite bytes of the key/values (before the vocabulary) or of the tensor infos (counts,
    lengths, types, dims, offsets): every outcome is a clean load or a LlamaError, never another
    exception or a hang."""
    data = gguf_bytes(tmp_path, weights)
    regions = [(4, data.index(b"tokenizer.ggml.tokens")), (data.index(b"token_embd.weight") - 8, data.index(b"output_norm.weight") + 60)]
    rng = random.Random(0)
    for trial in range(200):
        damaged = bytearray(data)
        for _ in range(rng.choice((1, 2, 3))):
            start, end = rng.choice(regions)
            damaged[rng.randrange(start, end)] = rng.choice((0, 255, rng.randrange(256)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_bytes(tmp_path, bytes(damaged), name=f"fuzz{trial % 3}.gguf")
        except LlamaError:
            pass


def test_cache_command_lists_prunes_and_clears(
    tmp_path: Path, private_cache: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from llama_cli.cli import app

    kept, changed, removed = (write_gguf(tmp_path / f"{n}.gguf", TINY, weights) for n in ("kept", "changed", "removed"))
    for path in (kept, changed, removed):
        load_checkpoint(path)
    write_gguf(changed, TINY, random_weights(TINY, seed=1))
    os.utime(changed, ns=(1, 1_000_000_000))
    removed.unlink()
    (private_cache / "gguf" / ".tmp-crashed").mkdir()
    os.utime(private_cache / "gguf" / ".tmp-crashed", ns=(1, 1))  # a killed run's folder, hours old
    runner = CliRunner()
    listing = runner.invoke(app, ["cache", "--json"])
    assert listing.exit_code == 0, listing.output
    states = {Path(e["source"]).name if e["source"] else e["state"]: e["state"] for e in json.loads(listing.stdout)["entries"]}
    assert states == {"kept.gguf": "current", "changed.gguf": "stale", "removed.gguf": "stale", "temporary": "temporary"}
    assert all(e["bytes"] < 100_000 for e in json.loads(listing.stdout)["entries"])  # metadata only: no weights cached
    pruned = runner.invoke(app, ["cache", "prune"])
    assert pruned.exit_code == 0 and "pruned 3 entries" in pruned.output
    assert [p.name.split("-")[0] for p in (private_cache / "gguf").iterdir()] == ["kept"]
    load_checkpoint(changed)  # a new entry for the changed file; writing it removes nothing else
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "cleared 2 entries" in cleared.output
    assert list((private_cache / "gguf").iterdir()) == []


def test_a_new_entry_replaces_the_old_one_of_the_same_file(tmp_path: Path, private_cache: Path, weights: dict[str, torch.Tensor]) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", TINY, weights)
    load_checkpoint(path)
    write_gguf(path, TINY, random_weights(TINY, seed=1))
    os.utime(path, ns=(1, 1_000_000_000))
    load_checkpoint(path)
    assert len(list((private_cache / "gguf").iterdir())) == 1  # entries of changed files do not pile up


# ---------------------------------------------------------------- `llama show` without torch


def write_folder(fmt: str, folder: Path, weights: dict[str, torch.Tensor]) -> Path:
    if fmt.startswith("hf"):
        half = {k: v.to(torch.bfloat16) for k, v in weights.items()} if fmt == "hf-bf16" else weights
        return write_hf(folder, TINY, half, shards=3 if fmt == "hf-sharded" else 1)
    if fmt.startswith("meta"):
        return write_meta(folder, TINY, weights, shards=2 if fmt == "meta-2-shards" else 1)
    hf = load_checkpoint(write_hf(folder.with_name(folder.name + "-hf"), TINY, weights))
    save_native(
        folder, hf.config, hf.weights, hf.tokenizer, hf.chat_template, origin={"quantization": "Q4_1"} if fmt == "native-q" else None
    )
    return folder


def show_json(path: Path) -> dict[str, Any]:
    from typer.testing import CliRunner

    from llama_cli.cli import app

    result = CliRunner().invoke(app, ["show", "--json", "-m", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("fmt", ["hf", "hf-sharded", "hf-bf16", "meta", "meta-2-shards", "native", "native-q"])
def test_show_reads_a_folder_as_loading_does(
    fmt: str, tmp_path: Path, weights: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cli.weights

    folder = write_folder(fmt, tmp_path / fmt, weights)
    inside = {"hf": "config.json", "meta": "params.json", "native": "model.safetensors"}[fmt.split("-")[0]]  # a file names its folder
    info, checkpoint = llama_cli.weights.describe_folder(folder / inside), load_checkpoint(folder)
    assert info is not None
    assert (info.config, info.format, info.source, info.quantization) == (
        checkpoint.config,
        checkpoint.format,
        folder,
        checkpoint.quantization,
    )
    assert info.chat_template == checkpoint.chat_template and info.tokenizer.special == checkpoint.tokenizer.special
    described = show_json(folder)
    monkeypatch.setattr(llama_cli.weights, "describe_folder", lambda path: None)  # the loading path `show` took before
    assert described == show_json(folder)


def test_show_refuses_what_loading_refuses(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    from llama_cli.weights import describe_folder

    cases: list[tuple[Path, str]] = []
    data = (write_hf(tmp_path / "hf", TINY, weights) / "model.safetensors").read_bytes()
    for cut in (0, 7, 100, len(data) - 1):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((tmp_path / "hf" / name).read_bytes())
        (folder / "model.safetensors").write_bytes(data[:cut])
        cases.append((folder, "truncated or corrupt"))
    cases.append((write_hf(tmp_path / "ffn", TINY, weights, intermediate_size=96), "config implies"))
    partial = {k: v for k, v in weights.items() if k != "layers.1.ffn_norm.weight"}
    cases.append((write_hf(tmp_path / "partial", TINY, partial), r"missing tensors \['layers\.1\.ffn_norm\.weight'\]"))
    cases.append((write_hf(tmp_path / "int", TINY, {**weights, "norm.weight": torch.ones(64, dtype=torch.int32)}), "is torch.int32"))
    meta = write_meta(tmp_path / "meta-cut", TINY, weights)
    (meta / "consolidated.00.pth").write_bytes((meta / "consolidated.00.pth").read_bytes()[:5000])
    cases.append((meta, "truncated"))
    meta = write_meta(tmp_path / "meta-object", TINY, weights)
    torch.save({**torch.load(meta / "consolidated.00.pth"), "path": Path("x")}, meta / "consolidated.00.pth")
    cases.append((meta, "not tensors only"))
    for folder, message in cases:
        with pytest.raises(ModelFormatError, match=message):
            load_checkpoint(folder)
        with pytest.raises(ModelFormatError, match=message):
            describe_folder(folder)


def test_show_imports_no_torch(tmp_path: Path, weights: dict[str, torch.Tensor], default_model_path: Path) -> None:
    import subprocess
    import sys

    paths = [write_folder(fmt, tmp_path / fmt, weights) for fmt in ("hf", "meta", "native")] + [default_model_path]
    code = "import sys\nfrom llama_cli.cli import app\nfor path in sys.argv[1:]:\n    try:\n        app(['show', '--json', '-m', path])\n"
    code += "    except SystemExit as exit:\n        assert not exit.code, exit.code\n"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line)["format"] for line in result.stdout.splitlines()] == ["huggingface", "meta", "native", "gguf"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "safetensors" in imported and not {m for m in imported if m == "torch" or m.startswith("torch.")}
