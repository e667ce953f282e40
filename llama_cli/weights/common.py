"""What every weight loader shares: the `Checkpoint` record, rename tables, shape checks, q/k layout.

Each format module (gguf.py, huggingface.py, meta.py) turns its files into a `Checkpoint` whose
tensors carry the internal names of `model.Transformer` (Meta's scheme: `tok_embeddings.weight`,
`layers.N.attention.wq.weight`, ...). This module holds the checks they all run before handing
tensors on, so a bad file fails here with one line instead of deep inside `load_state_dict`.
Importing it does not import torch (`llama show` reads a GGUF's metadata without it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ModelConfig, RopeScaling
from ..errors import ModelFormatError
from ..textio import read_json_object
from ..tokenizer import Tokenizer

if TYPE_CHECKING:  # torch is imported by the functions that handle tensors: describing a model needs none
    import torch

    from .quantized import QuantizedTensor

FLOAT_LABELS = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"}  # by str(dtype)
_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


@dataclass
class Checkpoint:
    """A model as loaded from disk: config, tensors under internal names, tokenizer, chat template."""

    config: ModelConfig
    # float32, float16 or bfloat16 on the CPU, or GGUF blocks as stored (QuantizedTensor); memory-mapped where the format allows
    weights: dict[str, torch.Tensor | QuantizedTensor]
    tokenizer: Tokenizer
    chat_template: str | None
    source: Path  # the file or folder the user named (a GGUF, not its cache entry)
    format: str  # "gguf" | "huggingface" | "meta" | "native"
    quantization: str  # storage type of most 2-D tensors: "Q4_1", "Q8_0", "F32", "BF16", ...


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor `Transformer(config).state_dict()` holds, with its shape (no model is built)."""
    q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (config.vocab_size, config.dim)}
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes[p + "attention_norm.weight"] = (config.dim,)
        shapes[p + "attention.wq.weight"] = (q_dim, config.dim)
        shapes[p + "attention.wk.weight"] = (kv_dim, config.dim)
        shapes[p + "attention.wv.weight"] = (kv_dim, config.dim)
        shapes[p + "attention.wo.weight"] = (config.dim, q_dim)
        shapes[p + "ffn_norm.weight"] = (config.dim,)
        shapes[p + "feed_forward.w1.weight"] = (config.ffn_dim, config.dim)  # gate
        shapes[p + "feed_forward.w2.weight"] = (config.dim, config.ffn_dim)  # down
        shapes[p + "feed_forward.w3.weight"] = (config.ffn_dim, config.dim)  # up
    shapes["norm.weight"] = (config.dim,)
    if not config.tie_embeddings:
        shapes["output.weight"] = (config.vocab_size, config.dim)
    return shapes


def rename(names: Iterable[str], table: Mapping[str, str], *, ignore: Iterable[str] = (), source: Path) -> dict[str, str]:
    """{internal name: file name} through a rename table whose keys use `{i}` for the layer number.

    Names matching `ignore` patterns (same `{i}` syntax) are dropped, e.g. stored rotary buffers.
    Any other name the table does not know means a model we cannot run: ModelFormatError.
    """
    skipped = set(ignore)
    mapped: dict[str, str] = {}
    unknown: list[str] = []
    for name in names:
        match = _LAYER_NUMBER.search(name)
        pattern = _LAYER_NUMBER.sub(".{i}.", name, count=1) if match else name
        if pattern in skipped:
            continue
        if pattern not in table:
            unknown.append(name)
            continue
        internal = table[pattern].format(i=match.group(1)) if match else table[pattern]
        mapped[internal] = name
    if unknown:
        raise ModelFormatError(f"{source}: unexpected tensors {sorted(unknown)[:3]} ({len(unknown)} in all): not a plain LLaMA model")
    return mapped


def check_layer_count(config: ModelConfig, n_tensors: int, source: Path) -> None:
    """Refuse a config with more layers than the file has tensors for (before anything loops over them)."""
    if 9 * config.n_layers + 2 > n_tensors:
        raise ModelFormatError(
            f"{source}: the config says {config.n_layers} layers but there are only {n_tensors} tensors: the checkpoint is incomplete"
        )


def check_weights(config: ModelConfig, weights: Mapping[str, torch.Tensor | QuantizedTensor], source: Path) -> None:
    """Raise ModelFormatError unless `weights` are exactly the config's tensors, in float dtypes or GGUF blocks.

    Reads only `shape` and `dtype`: the tensor_shapes.py records that `llama show` checks pass too."""
    check_layer_count(config, len(weights), source)
    shapes = expected_shapes(config)
    missing = [name for name in shapes if name not in weights]
    if missing:
        raise ModelFormatError(f"{source}: missing tensors {missing[:3]} ({len(missing)} in all): the checkpoint is incomplete")
    extra = sorted(set(weights) - set(shapes))
    if extra:
        raise ModelFormatError(
            f"{source}: tensors {extra[:3]} do not fit the config ({config.n_layers} layers, tied={config.tie_embeddings})"
        )
    for name, shape in shapes.items():
        tensor = weights[name]
        if tuple(tensor.shape) != shape:
            raise ModelFormatError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)} but the config implies {shape}: config and weights disagree"
            )
        if not hasattr(tensor, "qtype") and str(tensor.dtype) not in FLOAT_LABELS:  # a QuantizedTensor's blocks have a qtype
            raise ModelFormatError(f"{source}: tensor {name} is {tensor.dtype}; only float32, float16 and bfloat16 weights are supported")


def check_tokenizer(config: ModelConfig, tokenizer: Tokenizer, source: Path) -> None:
    """A tokenizer with ids past the embedding table would crash mid-generation: refuse it now."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelFormatError(f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only {config.vocab_size}")


def dtype_label(weights: Mapping[str, torch.Tensor]) -> str:
    """The dtype of most 2-D tensors as a label: "F32", "F16" or "BF16"."""
    counts = Counter(FLOAT_LABELS.get(str(t.dtype), str(t.dtype)) for t in weights.values() if t.dim() == 2)
    return counts.most_common(1)[0][0] if counts else "F32"


def unpermute_qk(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of wq/wk from the interleaved rotary layout (Meta, GGUF) to "rotate half" (HF, ours).

    Interleaved: each head's rows pair up as (x0, x1), (x2, x3), ...; rotate-half keeps all first
    members of pairs, then all second members. The inverse of llama.cpp's convert permutation
    `w.reshape(n_head, 2, hd // 2, dim).swapaxes(1, 2)`. Pass n_kv_heads for wk.
    """
    rows, dim = weight.shape
    head_dim = rows // n_heads
    w = weight.reshape(n_heads, head_dim // 2, 2, dim)  # (heads, pairs, 2, dim): interleaved pairs
    return w.transpose(1, 2).reshape(rows, dim)  # (heads, 2, pairs, dim) -> rotate-half rows


def to_rotate_half(weights: dict[str, Any], config: ModelConfig) -> None:
    """In place: every wq (n_heads) and wk (n_kv_heads) from interleaved to rotate-half rows.

    Quantized tensors move whole rows of blocks. Tensors of the wrong shape are left for
    `check_weights` to report."""
    import torch

    from .quantized import QuantizedTensor

    if config.head_dim % 2:
        raise ModelFormatError(f"head_dim {config.head_dim} is odd: rotary embeddings need pairs")
    for name, tensor in weights.items():
        heads = config.n_heads if name.endswith("attention.wq.weight") else config.n_kv_heads if name.endswith("attention.wk.weight") else 0
        if not heads or len(tensor.shape) != 2 or tensor.shape[0] != heads * config.head_dim:
            continue
        if isinstance(tensor, QuantizedTensor):
            weights[name] = tensor.rows(unpermute_qk(torch.arange(tensor.shape[0])[:, None], heads)[:, 0])
        else:
            weights[name] = unpermute_qk(tensor, heads)


def rope_scaling_from_dict(params: Mapping[str, Any] | None, source: Path) -> RopeScaling | None:
    """RopeScaling from a Hugging Face `rope_scaling` / `rope_parameters` dict (None: no scaling).

    "llama3" maps directly. "linear" divides every frequency by `factor`; a RopeScaling whose band
    edges lie below the shortest rotary wavelength (2*pi) does exactly that, so it is expressed as
    one. Other types (yarn, dynamic, longrope) are refused rather than run wrongly.
    """
    if not params:
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    try:
        if kind in ("default", "none", None):
            return None
        if kind == "llama3":
            return RopeScaling(
                factor=float(params["factor"]),
                low_freq_factor=float(params.get("low_freq_factor", 1.0)),
                high_freq_factor=float(params.get("high_freq_factor", 4.0)),
                original_context=int(params.get("original_max_position_embeddings", 8192)),
            )
        if kind == "linear":
            return linear_rope_scaling(float(params["factor"]))
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ModelFormatError(f"{source}: bad rope scaling parameters {dict(params)}: {exc}") from exc
    raise ModelFormatError(f"{source}: rope scaling type {kind!r} is not supported (supported: llama3, linear)")


def linear_rope_scaling(factor: float) -> RopeScaling:
    # Every wavelength (>= 2*pi) exceeds original_context / low_freq_factor = 1, so all are divided by factor.
    return RopeScaling(factor=factor, low_freq_factor=1.0, high_freq_factor=2.0, original_context=1)


def read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, error=ModelFormatError)


def float32_value(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(value)))
