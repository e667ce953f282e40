"""Tensors' names, shapes and dtypes as model files state them, read without torch or the data.

- safetensors: an 8-byte little-endian length, then a JSON object {name: {dtype, shape, data_offsets}};
- torch.save zips (Meta's consolidated.*.pth): data.pkl pickles each tensor as a call to
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, its storage naming its
  dtype (`torch.BFloat16Storage`). A restricted unpickler (only those names, like torch's
  `weights_only` loader) turns each into a `TensorShape`; the data files are never read.
A `TensorShape` has what the loaders' checks read of a tensor (common.py), so `llama show`
(folder_info.py) refuses what loading would refuse.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError

MAX_HEADER = 100 * 2**20  # safetensors' own limit on its JSON header
# safetensors dtype codes and torch storage classes, as str(torch dtype): what common.py's checks compare
SAFETENSORS_DTYPES = {
    "F64": "torch.float64",
    "F32": "torch.float32",
    "F16": "torch.float16",
    "BF16": "torch.bfloat16",
    "F8_E4M3": "torch.float8_e4m3fn",
    "F8_E5M2": "torch.float8_e5m2",
    "I64": "torch.int64",
    "I32": "torch.int32",
    "I16": "torch.int16",
    "I8": "torch.int8",
    "U8": "torch.uint8",
    "BOOL": "torch.bool",
}
STORAGE_DTYPES = {
    "DoubleStorage": "torch.float64",
    "FloatStorage": "torch.float32",
    "HalfStorage": "torch.float16",
    "BFloat16Storage": "torch.bfloat16",
    "LongStorage": "torch.int64",
    "IntStorage": "torch.int32",
    "ShortStorage": "torch.int16",
    "CharStorage": "torch.int8",
    "ByteStorage": "torch.uint8",
    "BoolStorage": "torch.bool",
}


@dataclass(frozen=True)
class TensorShape:
    """A tensor as a file describes it: shape and dtype (`str(torch dtype)`), no data.

    Has what the loaders' checks read of a tensor (`shape`, `dtype`, `dim()`)."""

    shape: tuple[int, ...]
    dtype: str

    def dim(self) -> int:
        return len(self.shape)


class NotReadableWithoutTorch(Exception):
    """A checkpoint torch can read but this reader cannot (a pre-1.6, non-zip torch.save file)."""


def safetensors_shapes(path: Path) -> dict[str, TensorShape]:
    """The tensors a safetensors file's header lists; a header that is cut off, not JSON, or
    points past the end of the file is ModelFormatError (as the loader says)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8).ljust(8, b"\xff"))
            if length > min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {length:,} in a file of {size:,} bytes")
            header = json.loads(file.read(length))
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
        shapes, end = {}, 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, (start, stop) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
            if dtype not in SAFETENSORS_DTYPES or not 0 <= start <= stop:
                raise ValueError(f"tensor {name!r}: bad dtype or offsets")
            shapes[name] = TensorShape(shape, SAFETENSORS_DTYPES[dtype])
            end = max(end, int(stop))
        if 8 + length + end > size:
            raise ValueError(f"the tensors end at byte {8 + length + end:,}, past the file's {size:,}")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise unreadable_safetensors(path, exc) from exc
    return shapes


def unreadable_safetensors(path: Path, exc: BaseException) -> ModelFormatError:
    """The error for a safetensors file that cannot be read, its header here or its tensors in the loader."""
    return ModelFormatError(f"{path}: unreadable safetensors file ({exc}); it is truncated or corrupt, download it again")


class _ShapeUnpickler(pickle.Unpickler):
    """Unpickles a torch.save state dict into TensorShapes; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a tensors-only checkpoint")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage" and pid[1] in STORAGE_DTYPES.values()):
            raise pickle.UnpicklingError(f"unexpected storage record {pid!r:.80}")
        return pid[1]  # the storage's dtype: all a TensorShape needs of it


def _rebuild(storage: str, offset: int, size: tuple[int, ...], *rest: Any) -> TensorShape:
    return TensorShape(tuple(int(n) for n in size), storage)


def pth_tensor_shapes(path: Path) -> dict[str, TensorShape]:
    """The named tensors of a torch.save zip, without reading their data; ModelFormatError as the loader's."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise ValueError("no data.pkl in the archive")
            state = _ShapeUnpickler(io.BytesIO(archive.read(pickles[0]))).load()
    except zipfile.BadZipFile as exc:
        if _is_legacy_torch_save(path):
            raise NotReadableWithoutTorch(str(path)) from exc
        raise ModelFormatError(f"{path}: unreadable checkpoint shard ({exc}); it is truncated, corrupt or not tensors only") from exc
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, RecursionError) as exc:
        raise ModelFormatError(
            f"{path}: unreadable checkpoint shard ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); it is "
            "truncated, corrupt or not tensors only"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, TensorShape) for k, v in state.items()):
        raise ModelFormatError(f"{path}: expected a dict of named tensors")
    return state


def _is_legacy_torch_save(path: Path) -> bool:
    """torch.save's format before 1.6 (not a zip): a pickled magic number first."""
    try:
        with path.open("rb") as file:
            return file.read(2) == b"\x80\x02"  # pickle protocol 2, which that format always used
    except OSError:
        return False


def cat_shapes(parts: list[TensorShape], dim: int) -> TensorShape:
    """torch.cat's result shape, for merge_shards."""
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    return TensorShape(tuple(shape), parts[0].dtype)
