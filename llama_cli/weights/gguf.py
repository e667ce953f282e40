"""GGUF files of architecture `llama`: metadata -> ModelConfig, tensors -> internal weights, still quantized.

The header is checked first (gguf_header.py) so that a truncated or hostile file fails with one
line before anything else reads it; unsupported architectures and tensor types are refused at
that point too, before the vocabulary is read (gguf_metadata.py) and the tokenizer built
(cache.py keeps the result). Tensors are never expanded here: the file is
memory-mapped and each 2-D tensor that is not float32 becomes a `QuantizedTensor` of its raw
blocks (quantized.py). Whoever needs floats dequantizes (`QuantizedTensor.dequantize`).

Gotchas (see also torchchat's GGUF loader, llama.cpp's convert_hf_to_gguf.py):
- GGUF lists dimensions fastest-varying first: the metadata shape is reversed into torch order
  (rows, cols), and each row's bytes are then contiguous in the file.
- llama.cpp's converter permutes q/k rows into the interleaved rotary layout; they are put back.
- Llama 3.1 GGUFs carry their rope scaling as a `rope_freqs.weight` tensor of per-frequency
  divisors rather than as metadata; it is mapped back to a RopeScaling (see `_rope_from_factors`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as Q

from ..config import ModelConfig, RopeScaling
from ..errors import ModelFormatError
from ..gguf_metadata import read_gguf_metadata
from ..model import rope_frequencies
from ..tokenizer import Tokenizer, tokenizer_from_gguf
from .common import (
    Checkpoint,
    check_layer_count,
    check_tokenizer,
    check_weights,
    float32_value,
    linear_rope_scaling,
    rename,
    to_rotate_half,
)
from .gguf_header import GGUFHeader, TensorInfo, scan_header
from .quantized import QuantizedTensor, dense

# Every type llama.cpp's quantize presets write for llama models (IQ4_NL/IQ4_XS need no importance matrix).
SUPPORTED_TYPES = (
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS,
)
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


def load_gguf(path: Path) -> Checkpoint:
    """Read the metadata, build the tokenizer and map the weights (cache.py skips the first two on later runs)."""
    header = scan_header(path)
    info = read_model_info(path, header)
    return checkpoint_from(path, header, info)


def checkpoint_from(path: Path, header: GGUFHeader, info: GGUFModelInfo) -> Checkpoint:
    """The Checkpoint of a GGUF whose metadata is already known: its tensors memory-mapped, not copied."""
    weights = map_tensors(path, header, info.config)
    return Checkpoint(info.config, weights, info.tokenizer, info.chat_template, path, "gguf", info.quantization)


def read_model_info(path: Path, header: GGUFHeader) -> GGUFModelInfo:
    """Config, tokenizer and chat template from the metadata; refuses unsupported files first."""
    check_supported(header, path)
    names = rename(header.tensors, TENSOR_NAMES, ignore=(ROPE_FREQS,), source=path)
    metadata = read_gguf_metadata(path)
    config = config_from_metadata(metadata, header, path)
    if ROPE_FREQS in header.tensors:
        if config.rope_scaling is not None:
            raise ModelFormatError(f"{path}: both {ROPE_FREQS} and rope.scaling metadata are present; which applies is ambiguous")
        factors = dense(_tensor(_file_bytes(path), header.tensors[ROPE_FREQS])).double().flatten()
        config = dataclasses.replace(config, rope_scaling=_rope_from_factors(factors, config, path))
    check_layer_count(config, len(names), path)
    tokenizer = tokenizer_from_gguf(metadata)
    check_tokenizer(config, tokenizer, path)
    template = metadata.get("tokenizer.chat_template")
    return GGUFModelInfo(config, tokenizer, template if isinstance(template, str) else None, quantization_label(header))


def map_tensors(path: Path, header: GGUFHeader, config: ModelConfig) -> dict[str, torch.Tensor | QuantizedTensor]:
    """Every weight under its internal name, as stored: F32 as float32 views of the file, all else as
    QuantizedTensor (F16/BF16 included); wq/wk rows reordered to rotate-half (copies of those two)."""
    check_supported(header, path)
    names = rename(header.tensors, TENSOR_NAMES, ignore=(ROPE_FREQS,), source=path)
    data = _file_bytes(path)
    weights = {internal: _tensor(data, header.tensors[name]) for internal, name in names.items()}
    to_rotate_half(weights, config)  # llama.cpp's converter interleaved q/k rows for its rotary kernel
    check_weights(config, weights, path)
    return weights


def _file_bytes(path: Path) -> np.ndarray:
    """The whole file, mapped copy-on-write: writable views (torch wants them), the file never written."""
    try:
        return np.memmap(path, dtype=np.uint8, mode="c")
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot map {path}: {exc}") from exc


def _tensor(data: np.ndarray, info: TensorInfo) -> torch.Tensor | QuantizedTensor:
    raw = data[info.offset : info.offset + info.n_bytes]
    if info.type == Q.F32:
        return torch.from_numpy(raw.view(np.float32)).view(info.shape)
    if len(info.shape) != 2:  # norms and rope factors stored in a smaller type
        return QuantizedTensor(torch.from_numpy(raw).view(1, -1), info.type.name, (1, math.prod(info.shape))).dequantize().view(info.shape)
    rows = info.shape[0]
    return QuantizedTensor(torch.from_numpy(raw).view(rows, -1), info.type.name, (rows, info.shape[1]))


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


# ---------------------------------------------------------------- metadata -> ModelConfig


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


def _rope_from_factors(factors: torch.Tensor, config: ModelConfig, path: Path) -> RopeScaling | None:
    """The RopeScaling whose frequencies equal base frequencies / `factors` (llama.cpp's rope_freqs).

    Llama 3.1 scaling divides low frequencies by `factor`, keeps high ones, and blends in between
    with a weight `smooth` that is a straight line in the frequency. Only the ratios
    original_context / low_freq_factor and original_context / high_freq_factor matter, so the
    standard values (1, 4, 8192) are tried first; otherwise the line is recovered from the blended
    frequencies (or, with fewer than two, any line that keeps each frequency on its side), and the
    result is checked against the tensor.
    """
    base = rope_frequencies(config.head_dim, config.rope_theta, None).double()
    if factors.shape != base.shape or not bool(torch.isfinite(factors).all()) or float(factors.min()) < 1 - 1e-6:
        raise ModelFormatError(f"{path}: {ROPE_FREQS} must hold head_dim/2 = {base.numel()} divisors >= 1")
    factor = float(factors.max())
    if factor < 1 + 1e-6:
        return None
    if bool(torch.allclose(factors, torch.full_like(factors, factor))):
        return linear_rope_scaling(factor)
    candidates = [RopeScaling(factor=factor, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192)]
    line = _smooth_line(base, factors, factor)
    if line is not None:
        slope, intercept = line  # smooth = slope * freq + intercept = (context * freq / 2pi - low) / (high - low)
        span = 8192 / (2 * math.pi * slope)
        low = -intercept * span
        candidates.append(RopeScaling(factor=factor, low_freq_factor=low, high_freq_factor=low + span, original_context=8192))
    wanted = base / factors
    for scaling in candidates:
        if torch.allclose(rope_frequencies(config.head_dim, config.rope_theta, scaling).double(), wanted, rtol=1e-4, atol=0):
            return scaling
    raise ModelFormatError(f"{path}: {ROPE_FREQS} does not follow Llama 3.1 rope scaling; this rope variant is not supported")


def _smooth_line(base: torch.Tensor, factors: torch.Tensor, factor: float) -> tuple[float, float] | None:
    """(slope, intercept) with smooth <= 0 at divided frequencies, = the blend weight in the band,
    >= 1 at kept ones, and <= 0 at frequency 0; None when no such line exists."""
    band = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    smooth = (1 / factors - 1 / factor) / (1 - 1 / factor)  # 0: divided by factor, 1: kept
    f, s = base[band].tolist(), smooth[band].tolist()
    divided = base[factors >= factor * (1 - 1e-6)].tolist()
    lo, hi = max(divided, default=0.0), min(base[factors <= 1 + 1e-6].tolist(), default=None)
    if len(f) >= 2:
        slope, intercept = (float(v) for v in np.polyfit(f, s, 1))
    elif len(f) == 1:  # steep enough to reach 0 before the next divided frequency and 1 before the next kept one
        slope = max(s[0] / (f[0] - lo), (1 - s[0]) / (hi - f[0]) if hi is not None else 0.0)
        intercept = s[0] - slope * f[0]
    elif hi is not None:  # a step between the last divided and the first kept frequency
        slope = 1 / (hi - lo)
        intercept = -slope * lo
    else:
        return None
    return (slope, intercept) if slope > 0 and intercept <= 1e-9 else None
