"""Our own "native" model folders: what training, `llama merge` and the GGUF metadata cache write.

A native folder holds llama.json (`ModelConfig` as JSON), model.safetensors under the internal
weight names, tokenizer files as `Tokenizer.save` writes them, and optionally chat_template.jinja
and origin.json (where a converted or merged model came from). The tensors are memory-mapped by
safetensors, as for a Hugging Face folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig
from ..errors import ModelFormatError
from ..tokenizer import Tokenizer
from .common import Checkpoint, dtype_label, read_json

if TYPE_CHECKING:  # torch and the safetensors reader are imported on use: the metadata cache needs only the names here
    import torch

NATIVE_CONFIG = "llama.json"
ORIGIN = "origin.json"


def load_native(folder: Path) -> Checkpoint:
    """A folder `save_native` wrote; `quantization` comes from origin.json when it was converted."""
    from .huggingface import finish_checkpoint, load_safetensors

    config = native_config(folder)
    weights = load_safetensors(folder)
    return finish_checkpoint(folder, config, weights, "native", native_label(folder, weights))


def native_config(folder: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(read_json(folder / NATIVE_CONFIG))
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ModelFormatError(f"{folder / NATIVE_CONFIG}: not a valid model config: {exc}") from exc


def native_label(folder: Path, weights: Mapping[str, Any]) -> str:
    """The storage type: origin.json's (a converted GGUF's), else that of most of `weights` (tensors or shapes)."""
    origin = read_json(folder / ORIGIN) if (folder / ORIGIN).is_file() else {}
    label = origin.get("quantization")
    return label if isinstance(label, str) else dtype_label(weights)


def save_native(
    folder: Path,
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer,
    chat_template: str | None,
    *,
    origin: Mapping[str, Any] | None = None,
) -> None:
    """Write a native folder into `folder` (created if needed): `load_native(folder)` gives the model back."""
    from safetensors.torch import save_file

    from .huggingface import SINGLE

    folder.mkdir(parents=True, exist_ok=True)
    (folder / NATIVE_CONFIG).write_text(config.to_json() + "\n", encoding="utf-8")
    save_file({name: tensor.contiguous() for name, tensor in weights.items()}, str(folder / SINGLE), metadata={"format": "pt"})
    tokenizer.save(folder)
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    if origin is not None:
        (folder / ORIGIN).write_text(json.dumps(dict(origin), indent=1) + "\n", encoding="utf-8")
