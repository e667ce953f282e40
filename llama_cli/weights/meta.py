"""Meta's own checkpoint folders: params.json, consolidated.NN.pth shards, tokenizer.model.

The tensor names are already ours (model.py follows Meta's reference code), but q/k rows use the
interleaved (complex-pair) rotary layout and are put into "rotate half" order here. A model
parallel checkpoint has one shard per GPU: column-parallel weights (wq, wk, wv, w1, w3, output)
were split by rows, row-parallel ones (wo, w2) by columns; norms are replicated. Shards are loaded
with `torch.load(weights_only=True, mmap=True)`: tensors only, no arbitrary pickle.

Reference: meta-llama/llama `llama/model.py` and `params.json`; transformers'
convert_llama_weights_to_hf.py for the shard layout and the q/k permutation.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig, RopeScaling
from ..errors import ModelFormatError
from .common import Checkpoint, check_layer_count, dtype_label, rename, to_rotate_half
from .huggingface import checked_text, read_json

if TYPE_CHECKING:  # torch loads the shards; describing a folder (folder_info.py) reads their shapes without it
    import torch

# Meta's names are the internal ones; the table still lists them so a stray tensor is caught.
META_NAMES = {
    "tok_embeddings.weight": "tok_embeddings.weight",
    **{f"layers.{{i}}.{n}.weight": f"layers.{{i}}.{n}.weight" for n in ("attention_norm", "ffn_norm")},
    **{f"layers.{{i}}.attention.{n}.weight": f"layers.{{i}}.attention.{n}.weight" for n in ("wq", "wk", "wv", "wo")},
    **{f"layers.{{i}}.feed_forward.{n}.weight": f"layers.{{i}}.feed_forward.{n}.weight" for n in ("w1", "w2", "w3")},
    "norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
META_IGNORED = ("rope.freqs",)  # LLaMA 1/2 saved their rotary table
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")  # split along dim 1 (inputs)


def load_meta(folder: Path) -> Checkpoint:
    import torch

    params = read_json(folder / "params.json")
    merged = merge_shards([_load_shard(p) for p in shard_paths(folder)], params, folder, cat=torch.cat)
    config, weights = meta_weights(params, merged, folder)
    to_rotate_half(weights, config)  # Meta's rotary kernel pairs adjacent rows (complex numbers)
    tokenizer, template = checked_text(folder, config, weights)
    return Checkpoint(config, weights, tokenizer, template, folder, "meta", dtype_label(weights))  # type: ignore[arg-type]


def shard_paths(folder: Path) -> list[Path]:
    paths = sorted(folder.glob("consolidated.*.pth"))
    if not paths:
        raise ModelFormatError(f"{folder}: params.json but no consolidated.*.pth weights")
    return paths


def meta_weights(params: Mapping[str, Any], merged: Mapping[str, Any], folder: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The config, and the merged tensors (or their shapes) under internal names."""
    names = rename(merged, META_NAMES, ignore=META_IGNORED, source=folder)
    weights = {internal: merged[name] for internal, name in names.items()}
    config = config_from_params(params, weights, folder)
    check_layer_count(config, len(weights), folder)
    return config, weights


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise ModelFormatError(
            f"{path}: unreadable checkpoint shard ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); it is "
            "truncated, corrupt or not tensors only"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFormatError(f"{path}: expected a dict of named tensors")
    return state


def merge_shards(shards: list[dict[str, Any]], params: Mapping[str, Any], folder: Path, *, cat: Callable[..., Any]) -> dict[str, Any]:
    """One state dict from model-parallel shards (a single shard is returned as is, still memory-mapped).

    `cat(parts, dim=)` joins a split tensor: torch.cat, or tensor_shapes.cat_shapes for shapes."""
    if len(shards) == 1:
        return shards[0]
    if any(set(s) != set(shards[0]) for s in shards):
        raise ModelFormatError(f"{folder}: the consolidated.*.pth shards hold different tensor names")
    merged: dict[str, Any] = {}
    for name, first in shards[0].items():
        parts = [s[name] for s in shards]
        if first.dim() < 2:  # norms, rope.freqs: replicated on every shard
            merged[name] = first
        elif name.endswith(ROW_PARALLEL):
            merged[name] = cat(parts, dim=1)
        elif name == "tok_embeddings.weight" and first.shape[1] != params.get("dim"):
            merged[name] = cat(parts, dim=1)  # LLaMA 1/2 ParallelEmbedding splits the width
        else:
            merged[name] = cat(parts, dim=0)  # column-parallel, and Llama 3's vocab-parallel embedding
    return merged


def config_from_params(params: Mapping[str, Any], weights: Mapping[str, Any], folder: Path) -> ModelConfig:
    """ModelConfig from params.json; vocabulary and FFN width come from the tensors.

    params.json has no context length: `max_seq_len` if present, else 131072 for scaled-rope
    (Llama 3.1+), 8192 for theta 500000 (Llama 3), 4096 otherwise (Llama 2). Llama 3.1 scaling
    uses factor 8 unless params.json says `rope_scaling_factor` (Llama 3.2 1B/3B used 32).
    """
    embed, gate = weights.get("tok_embeddings.weight"), weights.get("layers.0.feed_forward.w1.weight")
    if embed is None or gate is None:
        raise ModelFormatError(f"{folder}: missing tok_embeddings or layers.0.feed_forward.w1 tensors: the checkpoint is incomplete")
    try:
        theta = float(params.get("rope_theta", 10000.0))
        scaled = bool(params.get("use_scaled_rope", False))
        scaling = None
        if scaled:
            scaling = RopeScaling(
                factor=float(params.get("rope_scaling_factor", 8.0)), high_freq_factor=float(params.get("rope_high_freq_factor", 4.0))
            )
        default_context = 131072 if scaled else 8192 if theta >= 500000 else 4096
        n_heads = params["n_heads"]  # sizes as written: ModelConfig refuses what is not a whole number (int() took "1" and 64.9)
        return ModelConfig(
            dim=params["dim"],
            n_layers=params["n_layers"],
            n_heads=n_heads,
            n_kv_heads=params.get("n_kv_heads") or n_heads,
            vocab_size=embed.shape[0],  # params.json says -1 in LLaMA 2
            ffn_dim=gate.shape[0],  # the multiple_of / ffn_dim_multiplier formula, already applied
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=theta,
            context_length=params.get("max_seq_len", default_context),
            tie_embeddings="output.weight" not in weights,
            rope_scaling=scaling,
        )
    except KeyError as exc:
        raise ModelFormatError(f"{folder / 'params.json'}: lacks {exc}") from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ModelFormatError(f"{folder / 'params.json'}: impossible model shape: {exc}") from exc
