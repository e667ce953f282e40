"""What a GGUF holds besides its weights: its config, tokenizer, chat template and storage type, read without torch.

The checks that refuse a file we cannot run (another architecture, a split file, experts, a
tensor type without a kernel) run here, before any tensor is mapped; gguf.py maps the tensors.
`llama show` describes a GGUF from this alone, and the metadata cache (cache.py) stores it.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGMLQuantizationType as Q

from ..config import ModelConfig, RopeScaling
from ..errors import ModelFormatError
from ..gguf_metadata import read_gguf_metadata
from ..tokenizer import Tokenizer, tokenizer_from_gguf
from .common import check_layer_count, check_tokenizer, float32_value, linear_rope_scaling, rename
from .gguf_header import GGUFHeader, TensorInfo

# Every type llama.cpp's quantize presets write for llama models (IQ4_NL/IQ4_XS need no importance matrix).
SUPPORTED_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS)
ROPE_FREQS = "rope_freqs.weight"

# GGUF tensor name -> internal name ({i} is the layer number).
TENSOR_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.attention_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attention.wk.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attention.wv.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.attention.wo.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.feed_forward.w2.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.feed_forward.w3.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}


@dataclasses.dataclass(frozen=True)
class GGUFModelInfo:
    """Everything of a GGUF but its weights: what the cache keeps (cache.py)."""

    config: ModelConfig
    tokenizer: Tokenizer
    chat_template: str | None
    quantization: str


def read_model_info(path: Path, header: GGUFHeader) -> GGUFModelInfo:
    """Config, tokenizer and chat template from the metadata; refuses unsupported files first."""
    check_supported(header, path)
    names = rename(header.tensors, TENSOR_NAMES, ignore=(ROPE_FREQS,), source=path)
    metadata = read_gguf_metadata(path)
    config = config_from_metadata(metadata, header, path)
    if ROPE_FREQS in header.tensors:
        if config.rope_scaling is not None:
            raise ModelFormatError(f"{path}: both {ROPE_FREQS} and rope.scaling metadata are present; which applies is ambiguous")
        from .rope_factors import scaling_from_factors  # torch: only files with a rope_freqs tensor need it

        factors = _f32_tensor(path, header.tensors[ROPE_FREQS])
        config = dataclasses.replace(config, rope_scaling=scaling_from_factors(factors, config, path, ROPE_FREQS))
    check_layer_count(config, len(names), path)
    tokenizer = tokenizer_from_gguf(metadata)
    check_tokenizer(config, tokenizer, path)
    template = metadata.get("tokenizer.chat_template")
    return GGUFModelInfo(config, tokenizer, template if isinstance(template, str) else None, quantization_label(header))


def _f32_tensor(path: Path, info: TensorInfo) -> np.ndarray:
    """A small F32 tensor of the file (rope_freqs), read as float64 values."""
    if info.type != Q.F32:
        raise ModelFormatError(f"{path}: {info.name} is {info.type.name}; expected F32")
    with path.open("rb") as file:
        file.seek(info.offset)
        return np.frombuffer(file.read(info.n_bytes), dtype="<f4").astype(np.float64).reshape(-1)


def quantization_label(header: GGUFHeader) -> str:
    """The storage type of most 2-D tensors ("Q4_1" for a Q4_1 file whose embedding is Q8_0)."""
    counts = Counter(t.type.name for t in header.tensors.values() if len(t.shape) == 2)
    return counts.most_common(1)[0][0] if counts else "F32"


def check_supported(header: GGUFHeader, path: Path) -> None:
    arch = header.architecture
    if arch != "llama":
        raise ModelFormatError(
            f"{path}: GGUF architecture {arch!r} is not supported; only 'llama' (LLaMA, SmolLM, Mistral-7B-style) models run here"
        )
    if int(header.scalars.get("split.count", 1) or 1) > 1:
        raise ModelFormatError(
            f"{path}: a split GGUF (one of {header.scalars['split.count']} parts); merge it first with `llama-gguf-split --merge`"
        )
    if int(header.scalars.get("llama.expert_count", 0) or 0) > 0:
        raise ModelFormatError(f"{path}: a mixture-of-experts model ({header.scalars['llama.expert_count']} experts) is not supported")
    unsupported = sorted({t.type.name for t in header.tensors.values() if t.type not in SUPPORTED_TYPES})
    if unsupported:
        names = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise ModelFormatError(
            f"{path}: tensor type {', '.join(unsupported)} is not supported (supported: {names}); use a file quantized to one of those"
        )


def config_from_metadata(metadata: Mapping[str, Any], header: GGUFHeader, path: Path) -> ModelConfig:
    """ModelConfig from `llama.*` keys; tensor shapes fill in what the metadata may leave out."""

    def number(key: str, default: float | None = None, *, integer: bool = True) -> Any:
        value = metadata.get(f"llama.{key}", default)
        if isinstance(value, list) and value and len(set(value)) == 1:  # per-layer arrays, all equal
            value = value[0]
        if value is None:
            raise ModelFormatError(f"{path}: GGUF metadata lacks llama.{key}: the file is incomplete")
        wanted = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
            raise ModelFormatError(f"{path}: GGUF metadata llama.{key} = {value!r} is not a single {'integer' if integer else 'number'}")
        return value

    dim, n_heads = number("embedding_length"), number("attention.head_count")
    tokens = metadata.get("tokenizer.ggml.tokens")
    embed = header.tensors.get("token_embd.weight")
    vocab = number("vocab_size", len(tokens) if isinstance(tokens, list) else embed.shape[0] if embed else None)
    head_dim = number("attention.key_length", number("rope.dimension_count", dim // n_heads if n_heads > 0 else 0))
    if number("rope.dimension_count", head_dim) != head_dim or number("attention.value_length", head_dim) != head_dim:
        raise ModelFormatError(f"{path}: partial rotary or unequal key/value head sizes are not supported")
    try:
        return ModelConfig(
            dim=dim,
            n_layers=number("block_count"),
            n_heads=n_heads,
            n_kv_heads=number("attention.head_count_kv", n_heads),
            vocab_size=vocab,
            ffn_dim=number("feed_forward_length"),
            norm_eps=float32_value(number("attention.layer_norm_rms_epsilon", 1e-5, integer=False)),
            rope_theta=float32_value(number("rope.freq_base", 10000.0, integer=False)),
            context_length=number("context_length", 2048),
            tie_embeddings="output.weight" not in header.tensors,
            head_dim=head_dim,
            rope_scaling=_rope_from_metadata(metadata, path),
        )
    except (ValueError, ArithmeticError) as exc:
        raise ModelFormatError(f"{path}: impossible model shape in the GGUF metadata: {exc}") from exc


def _rope_from_metadata(metadata: Mapping[str, Any], path: Path) -> RopeScaling | None:
    kind = metadata.get("llama.rope.scaling.type", "none")
    factor = metadata.get("llama.rope.scaling.factor")
    if kind in ("none", "") or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear" and isinstance(factor, (int, float)) and factor > 0:
        return linear_rope_scaling(float32_value(factor))
    raise ModelFormatError(f"{path}: rope scaling {kind!r} (factor {factor}) is not supported; only linear and Llama 3.1 scaling are")
