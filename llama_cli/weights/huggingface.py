"""Hugging Face `LlamaForCausalLM` folders, and the safetensors reading they share with native.py.

A Hugging Face folder holds config.json, model.safetensors (or shards listed in
model.safetensors.index.json) and tokenizer files. Its q/k rows are already in the "rotate half"
layout the model uses, so tensors only need renaming. The tensors are memory-mapped by
safetensors: loading takes milliseconds. No pickle, no remote code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from safetensors import SafetensorError, safe_open

from ..config import ModelConfig
from ..errors import ModelFormatError
from ..tokenizer import Tokenizer, chat_template_from_folder, load_tokenizer
from .common import Checkpoint, check_tokenizer, check_weights, dtype_label, read_json, rename, rope_scaling_from_dict
from .tensor_shapes import TensorShape, safetensors_shapes, unreadable_safetensors

if TYPE_CHECKING:  # torch comes with the tensors (safe_open's "pt"): describing a folder needs none
    import torch

T = TypeVar("T")  # a tensor, or its TensorShape (folder_info.py)

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"

# Hugging Face tensor name -> internal name ({i} is the layer number).
HF_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
HF_IGNORED = ("model.layers.{i}.self_attn.rotary_emb.inv_freq",)  # a buffer older transformers saved


def safetensors_files(folder: Path) -> tuple[dict[str, str], list[str]]:
    """(weight_map, files): model.safetensors alone, or the shards model.safetensors.index.json lists."""
    index_path = folder / INDEX
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and Path(f).name == f for f in weight_map.values()):
            raise ModelFormatError(f"{index_path}: no valid weight_map (tensor name -> shard file in this folder)")
        return weight_map, sorted(set(weight_map.values()))
    if (folder / SINGLE).is_file():
        return {}, [SINGLE]
    found = ", ".join(sorted(p.name for p in folder.glob("*.bin"))) or "none"
    raise ModelFormatError(
        f"{folder}: no {SINGLE} or {INDEX} (pickled .bin weights are not loaded: {found}); convert the weights to safetensors"
    )


def _check_all_found(folder: Path, weight_map: Mapping[str, str], found: Mapping[str, object]) -> None:
    missing = sorted(set(weight_map) - set(found))
    if missing:
        raise ModelFormatError(f"{folder / INDEX}: tensors {missing[:3]} are listed but in no shard ({len(missing)} in all)")


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists (memory-mapped)."""
    weight_map, files = safetensors_files(folder)
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        try:
            with safe_open(str(path), framework="pt") as shard:
                for key in shard.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    tensors[key] = shard.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise unreadable_safetensors(path, exc) from exc
    _check_all_found(folder, weight_map, tensors)
    return tensors


def folder_tensor_shapes(folder: Path) -> dict[str, TensorShape]:
    """What load_safetensors would give, as shapes and dtypes from the files' headers (no torch, no data)."""
    weight_map, files = safetensors_files(folder)
    shapes: dict[str, TensorShape] = {}
    for name in files:
        shapes.update(safetensors_shapes(folder / name))
    _check_all_found(folder, weight_map, shapes)
    return shapes


# ---------------------------------------------------------------- Hugging Face


def config_from_hf(cfg: Mapping[str, Any], path: Path) -> ModelConfig:
    """ModelConfig from a transformers LlamaConfig dict (4.x `rope_scaling`, or 5.x `rope_parameters`)."""
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in (cfg.get("architectures") or []):
        kind = cfg.get("model_type") or cfg.get("architectures")
        raise ModelFormatError(f"{path}: model type {kind!r} is not supported; only Llama (LlamaForCausalLM) checkpoints run here")
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?") if isinstance(cfg["quantization_config"], dict) else "?"
        raise ModelFormatError(f"{path}: {method}-quantized Hugging Face checkpoints are not supported; use the float weights or a GGUF")
    if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("hidden_act", "silu") != "silu":
        raise ModelFormatError(f"{path}: attention/MLP biases or a non-SiLU activation are not supported")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ModelFormatError(f"{path}: rope_scaling/rope_parameters must be an object")
    try:
        # The sizes go to ModelConfig as written, which refuses any that is not a whole number:
        # int() here took "num_hidden_layers": "1" and "hidden_size": 64.9 without a word.
        n_heads = cfg["num_attention_heads"]
        return ModelConfig(
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            vocab_size=cfg["vocab_size"],
            ffn_dim=cfg["intermediate_size"],
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
            context_length=cfg.get("max_position_embeddings", 2048),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=cfg.get("head_dim") or 0,
            rope_scaling=rope_scaling_from_dict(rope, path),
        )
    except KeyError as exc:
        raise ModelFormatError(f"{path}: config.json lacks {exc}") from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ModelFormatError(f"{path}: impossible model shape in config.json: {exc}") from exc


def load_huggingface(folder: Path) -> Checkpoint:
    config = hf_config(folder)
    weights = hf_weights(config, load_safetensors(folder), folder)
    return finish_checkpoint(folder, config, weights, "huggingface", dtype_label(weights))


def hf_config(folder: Path) -> ModelConfig:
    return config_from_hf(read_json(folder / "config.json"), folder / "config.json")


def hf_weights(config: ModelConfig, tensors: Mapping[str, T], folder: Path) -> dict[str, T]:
    """The folder's tensors (or their shapes) under internal names."""
    names = rename(tensors, HF_NAMES, ignore=HF_IGNORED, source=folder)
    if config.tie_embeddings:
        names.pop("output.weight", None)  # some tied checkpoints store a copy of the embedding
    return {internal: tensors[name] for internal, name in names.items()}


def finish_checkpoint(folder: Path, config: ModelConfig, weights: dict[str, torch.Tensor], kind: str, quantization: str) -> Checkpoint:
    tokenizer, template = checked_text(folder, config, weights)
    return Checkpoint(config, weights, tokenizer, template, folder, kind, quantization)  # type: ignore[arg-type]


def checked_text(folder: Path, config: ModelConfig, weights: Mapping[str, Any]) -> tuple[Tokenizer, str | None]:
    """The folder's tokenizer and chat template, once its weights (tensors or shapes) and then the
    tokenizer are checked against the config."""
    check_weights(config, weights, folder)
    tokenizer = load_tokenizer(folder)
    check_tokenizer(config, tokenizer, folder)
    return tokenizer, chat_template_from_folder(folder)
