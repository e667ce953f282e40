"""LoRA: low-rank adapters on a model's linear layers, trained alone, saved alone, merged on request.

A `LoRALinear` computes `x W^T + (alpha / r) * x A^T B^T` with the base weight W frozen, A (r, in)
random and B (out, r) zero, so an untrained adapter leaves the model unchanged. Merging adds
`(alpha / r) * B A` to W: the merged model computes the same function (up to float rounding).

An adapter folder holds `adapter.safetensors` (tensors named `layers.N.attention.wq.lora_a`,
`...lora_b`) and `adapter.json` (rank, alpha, targets, and the base model's shape, which loading
checks). References: Hu et al. 2021, "LoRA" (arXiv:2106.09685); microsoft/LoRA `loralib`;
huggingface/peft (A initialised like a linear layer, B at zero).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .errors import LlamaError, ModelNotFoundError, UsageError, literal

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter.json", "adapter.safetensors"
TARGET_PATHS = {  # --targets name -> the linear layer's path inside a TransformerBlock
    "wq": "attention.wq", "wk": "attention.wk", "wv": "attention.wv", "wo": "attention.wo",
    "w1": "feed_forward.w1", "w2": "feed_forward.w2", "w3": "feed_forward.w3",
}  # fmt: skip


class AdapterError(LlamaError):
    """An adapter folder that is missing, unreadable, or made for another model."""


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(TARGET_PATHS)  # every linear layer of every block

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UsageError.naming(f"{{rank}} must be at least 1, got {self.rank}")
        if not math.isfinite(self.alpha):
            raise UsageError.naming(f"{{alpha}} must be a finite number, got {self.alpha}")
        unknown = [t for t in self.targets if t not in TARGET_PATHS]
        if unknown or not self.targets:
            raise UsageError.naming(f"unknown {{targets}} {literal(', '.join(unknown) or '(none)')}; choose from {', '.join(TARGET_PATHS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """A bias-free linear layer plus a trainable low-rank update; the base weight keeps its name."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.scale = scale
        a = torch.empty(rank, self.in_features, dtype=torch.float32)
        bound = 1 / math.sqrt(self.in_features)  # kaiming_uniform(a=sqrt(5)), as nn.Linear and peft use
        a.uniform_(-bound, bound, generator=generator)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}  # the base's (fine-tuning builds float32)
        self.lora_a = nn.Parameter(a.to(**like))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **like))  # (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    def delta(self) -> torch.Tensor:
        """The update to the weight, (out, in), in float32 (or float64 for a float64 model)."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        return (self.lora_b.to(dtype) @ self.lora_a.to(dtype)) * self.scale


def add_lora(model: nn.Module, config: LoRAConfig, *, seed: int = 0) -> list[str]:
    """Freeze every parameter of `model`, then wrap the target layers of every block in LoRALinear.

    Returns the wrapped layers' names ("layers.0.attention.wq", ...). Only the adapters train.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    names = []
    for i, block in enumerate(model.layers):  # type: ignore[union-attr]
        for target in config.targets:
            parent_path, _, attr = TARGET_PATHS[target].rpartition(".")
            parent = block.get_submodule(parent_path)
            setattr(parent, attr, LoRALinear(getattr(parent, attr), config.rank, config.scale, generator))
            names.append(f"layers.{i}.{TARGET_PATHS[target]}")
    return names


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors by name (`layers.0.attention.wq.lora_a`, ...), on the CPU."""
    return {
        f"{name}.{part}": getattr(module, part).detach().to("cpu", torch.float32).contiguous()
        for name, module in model.named_modules() if isinstance(module, LoRALinear) for part in ("lora_a", "lora_b")
    }  # fmt: skip


def merge_lora(model: nn.Module) -> None:
    """In place: every LoRALinear becomes a plain nn.Linear holding W + scale * B A."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            merged = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
            update = module.delta()
            merged.weight = nn.Parameter((module.weight.to(update.dtype) + update).to(module.weight.dtype), requires_grad=False)
            parent_path, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, merged)


@dataclass
class Adapter:
    """An adapter as loaded from disk."""

    config: LoRAConfig
    tensors: dict[str, torch.Tensor]
    base_config: dict[str, Any] = field(default_factory=dict)  # the base model's ModelConfig, as a dict
    base_model: str | None = None  # the base model as it was named when training (a path or a known name)

    def layers(self) -> list[str]:
        return sorted({name.rsplit(".", 1)[0] for name in self.tensors})

    def check_base(self, config: ModelConfig, source: object) -> None:
        """Refuse a model of another shape than the one the adapter was trained on."""
        shape = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size")
        base = self.base_config  # only its shape is compared: other fields (a newer version's) do not matter here
        if base and any(base.get(k) != getattr(config, k) for k in shape):
            theirs = ", ".join(f"{k} {base.get(k)}" for k in shape)
            ours = ", ".join(f"{k} {getattr(config, k)}" for k in shape)
            raise AdapterError(f"the adapter was trained on another model ({theirs}); {source} has {ours}")

    def merged(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of `weights` (internal names) with every adapted weight replaced by W + scale * B A."""
        out = dict(weights)
        for layer in self.layers():
            name = f"{layer}.weight"
            if name not in out:
                raise AdapterError(f"the adapter changes {name}, which the model does not have")
            a, b = self.tensors[f"{layer}.lora_a"], self.tensors[f"{layer}.lora_b"]
            w = out[name]
            if b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1]:
                raise AdapterError(f"adapter tensors for {name} do not fit its shape {tuple(w.shape)}")
            out[name] = (w.float() + (b.float() @ a.float()) * self.config.scale).to(w.dtype)
        return out


def save_adapter(
    folder: Path, tensors: Mapping[str, torch.Tensor], config: LoRAConfig, *, base_config: ModelConfig, base_model: str | None
) -> None:
    """Write an adapter folder: the `.lora_a`/`.lora_b` tensors among `tensors` (a state dict will do)."""
    folder.mkdir(parents=True, exist_ok=True)
    lora = {name: t.to("cpu", torch.float32).contiguous() for name, t in tensors.items() if name.endswith((".lora_a", ".lora_b"))}
    save_file(lora, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    meta = {
        "format": "llama-lora", "version": 1, "rank": config.rank, "alpha": config.alpha, "targets": list(config.targets),
        "base_model": base_model, "base_config": json.loads(base_config.to_json()),
    }  # fmt: skip
    (folder / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def load_adapter(folder: str | Path) -> Adapter:
    """The adapter in `folder` (what `llama finetune` wrote); one-line errors for anything else."""
    folder = Path(folder).expanduser()
    if not (folder / ADAPTER_CONFIG).is_file():
        what = "the path does not exist" if not folder.exists() else f"no {ADAPTER_CONFIG} there"
        raise ModelNotFoundError(f"no adapter at {folder}: {what} (llama finetune writes adapter.json and adapter.safetensors)")
    try:
        meta = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        config = LoRAConfig(rank=int(meta["rank"]), alpha=float(meta["alpha"]), targets=tuple(meta["targets"]))
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, UsageError) as error:
        raise AdapterError(f"{folder}: not a readable adapter ({type(error).__name__}: {error})") from None
    pairs = {name.rsplit(".", 1)[0] for name in tensors}
    if not tensors or any(f"{p}.lora_a" not in tensors or f"{p}.lora_b" not in tensors for p in pairs):
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: expected lora_a/lora_b pairs")
    base_config = meta.get("base_config") if isinstance(meta.get("base_config"), dict) else {}
    return Adapter(config, tensors, base_config, meta.get("base_model"))


def apply_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Merge an adapter into a built model's weights in place; the new weights are new tensors, so
    memory-mapped checkpoint tensors are never written to."""
    merged = adapter.merged({name: p.detach() for name, p in model.named_parameters()})
    for layer in adapter.layers():
        model.get_submodule(layer).weight = nn.Parameter(merged[f"{layer}.weight"], requires_grad=False)
