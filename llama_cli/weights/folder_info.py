"""What a model folder holds besides its weights (native, Hugging Face, Meta), read without torch.

The counterpart of gguf_info.py for folders: `llama show` describes a model from its config,
tokenizer, chat template and its tensors' names, shapes and dtypes, which the files state
without their data (tensor_shapes.py). The loaders' checks (config and tensors agree, the
tokenizer fits the embedding table) run on those shapes, so `show` refuses what loading would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from ..tokenizer import Tokenizer
from .common import dtype_label
from .huggingface import checked_text, folder_tensor_shapes, hf_config, hf_weights, read_json
from .meta import merge_shards, meta_weights, shard_paths
from .native import NATIVE_CONFIG, native_config, native_label
from .tensor_shapes import TensorShape, cat_shapes, pth_tensor_shapes


@dataclass(frozen=True)
class FolderModelInfo:
    config: ModelConfig
    tokenizer: Tokenizer
    chat_template: str | None
    quantization: str
    format: str  # "native" | "huggingface" | "meta"
    source: Path  # the folder


def read_folder_info(folder: Path) -> FolderModelInfo:
    """Describe the model folder `folder` (as `load_checkpoint` would find it) from its files alone.

    Raises what loading would (ModelFormatError), or NotReadableWithoutTorch for a Meta shard in
    torch's pre-1.6 format (the caller loads it instead)."""
    weights: dict[str, TensorShape]
    if (folder / NATIVE_CONFIG).is_file():
        config, weights = native_config(folder), folder_tensor_shapes(folder)
        kind, quantization = "native", native_label(folder, weights)
    elif (folder / "config.json").is_file():
        config = hf_config(folder)
        weights = hf_weights(config, folder_tensor_shapes(folder), folder)
        kind, quantization = "huggingface", dtype_label(weights)  # type: ignore[arg-type]
    else:
        params = read_json(folder / "params.json")
        merged = merge_shards([pth_tensor_shapes(p) for p in shard_paths(folder)], params, folder, cat=cat_shapes)
        config, weights = meta_weights(params, merged, folder)
        kind, quantization = "meta", dtype_label(weights)  # type: ignore[arg-type]
    tokenizer, template = checked_text(folder, config, weights)
    return FolderModelInfo(config, tokenizer, template, quantization, kind, folder)
