"""GGUF files of architecture `llama`: tensors -> internal weights, still quantized (gguf_info.py reads the rest).

The header is checked first (gguf_header.py) so that a truncated or hostile file fails with one
line before anything else reads it; unsupported architectures and tensor types are refused at
that point too (gguf_info.py), before the vocabulary is read (gguf_metadata.py) and the
tokenizer built (cache.py keeps the result). Tensors are never expanded here: the file is
memory-mapped and each 2-D tensor that is not float32 becomes a `QuantizedTensor` of its raw
blocks (quantized.py). Whoever needs floats dequantizes (`QuantizedTensor.dequantize`).

Gotchas (see also torchchat's GGUF loader, llama.cpp's convert_hf_to_gguf.py):
- GGUF lists dimensions fastest-varying first: the metadata shape is reversed into torch order
  (rows, cols), and each row's bytes are then contiguous in the file.
- llama.cpp's converter permutes q/k rows into the interleaved rotary layout; they are put back.
- Llama 3.1 GGUFs carry their rope scaling as a `rope_freqs.weight` tensor of per-frequency
  divisors rather than as metadata; it is mapped back to a RopeScaling (rope_factors.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as Q

from ..config import ModelConfig
from ..errors import ModelFormatError
from .common import Checkpoint, check_weights, rename, to_rotate_half
from .gguf_header import GGUFHeader, TensorInfo, scan_header
from .gguf_info import ROPE_FREQS, TENSOR_NAMES, GGUFModelInfo, check_supported, read_model_info
from .gguf_info import quantization_label as quantization_label  # noqa: PLC0414 (re-exported)
from .quantized import QuantizedTensor


def load_gguf(path: Path) -> Checkpoint:
    """Read the metadata, build the tokenizer and map the weights (cache.py skips the first two on later runs)."""
    header = scan_header(path)
    info = read_model_info(path, header)
    return checkpoint_from(path, header, info)


def checkpoint_from(path: Path, header: GGUFHeader, info: GGUFModelInfo) -> Checkpoint:
    """The Checkpoint of a GGUF whose metadata is already known: its tensors memory-mapped, not copied."""
    weights = map_tensors(path, header, info.config)
    return Checkpoint(info.config, weights, info.tokenizer, info.chat_template, path, "gguf", info.quantization)


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
