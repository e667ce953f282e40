"""Walk a GGUF header and check every count, length and offset against the file size.

`gguf.GGUFReader` trusts its input: a corrupt or hostile header can make it loop over a claimed
2**60 array items, read past the end, or fail with IndexError/KeyError/ValueError from deep inside.
This module reads the header with `struct` over a memory map, decoding only what it must (lengths,
types, a few scalars), and raises one-line ModelFormatErrors, so the reader is only ever handed a
file whose structure is sound. It does not decode arrays (the vocabulary): the reader does that.

Layout (little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
  "GGUF", version u32, tensor_count u64, kv_count u64,
  kv_count x (key string, value type u32, value), tensor_count x (name string, n_dims u32,
  dims u64 x n_dims (fastest-varying first), ggml type u32, data offset u64), padding to
  `general.alignment` (32), tensor data. A string is a u64 byte length and UTF-8 bytes.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelFormatError
from ..gguf_metadata import ARRAY, MAGIC, MAX_NESTING, STRING, GGUFCursor

if TYPE_CHECKING:  # imported where used: the gguf package takes ~0.1 s to import, and cached runs never scan a header
    from gguf.constants import GGMLQuantizationType

MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, a one-byte value
MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset
MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order, rows first (GGUF lists dims fastest-varying first)
    type: GGMLQuantizationType
    offset: int  # absolute position of the data in the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    alignment: int
    scalars: dict[str, Any]  # every scalar and string key/value (arrays are skipped)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        value = self.scalars.get("general.architecture")
        return value if isinstance(value, str) else None


class _Cursor(GGUFCursor):
    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {what} at byte {self.pos} of {self.size}: the GGUF is truncated or corrupt")

    def value(self, kind: int, depth: int = 0) -> Any:
        """Read a scalar or string; step over an array (returning None): the reader decodes those."""
        if kind == STRING:
            return self.string(errors="replace")
        if kind == ARRAY and depth < MAX_NESTING:
            return self.array(depth, read=False)
        return super().value(kind, depth)


def scan_header(path: Path) -> GGUFHeader:
    """Check the whole header of the GGUF at `path` and list its tensors; ModelFormatError if unsound."""
    try:
        with path.open("rb") as file:
            size = path.stat().st_size
            if size < 24:
                raise ModelFormatError(f"{path}: {size} bytes is too short for a GGUF file (truncated?)")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _scan(_Cursor(buf, path))
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _scan(cur: _Cursor) -> GGUFHeader:
    path = cur.path
    magic = bytes(cur.buf[0:4])
    if magic != MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    cur.take(4)
    version = cur.unpack("<I")
    if version & 0xFFFF == 0:
        raise ModelFormatError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise ModelFormatError(
            f"{path}: GGUF version {version} is not supported (only 2 and 3); reconvert the model with a current llama.cpp"
        )
    tensor_count, kv_count = cur.unpack("<Q"), cur.unpack("<Q")
    if tensor_count * MIN_TENSOR_BYTES + kv_count * MIN_KV_BYTES > cur.size - cur.pos:
        raise ModelFormatError(
            f"{path}: the header claims {tensor_count} tensors and {kv_count} key/values, more than its {cur.size} bytes can hold: "
            "the file is corrupt"
        )

    scalars: dict[str, Any] = {}
    seen: set[str] = set()
    for _ in range(kv_count):
        key = cur.string("a key")
        if key in seen:
            raise cur.fail(f"duplicate key {key!r}")
        seen.add(key)
        kind = cur.unpack("<I")
        if key == "general.alignment" and kind != 4:
            raise cur.fail("general.alignment that is not a uint32")
        value = cur.value(kind)
        if kind != ARRAY:
            scalars[key] = value
    alignment = scalars.get("general.alignment", 32)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ModelFormatError(f"{path}: general.alignment {alignment} is not a power of two: the file is corrupt")

    infos = [_tensor_info(cur) for _ in range(tensor_count)]
    data_start = cur.pos + (-cur.pos % alignment)
    tensors: dict[str, TensorInfo] = {}
    for name, dims, kind, relative in infos:
        if name in tensors:
            raise ModelFormatError(f"{path}: tensor {name!r} appears twice: the file is corrupt")
        block, type_size = _quant_sizes()[kind]
        if dims[0] % block:
            raise ModelFormatError(f"{path}: tensor {name!r} has rows of {dims[0]}, not a multiple of the {kind.name} block of {block}")
        n_bytes = math.prod(dims) // block * type_size
        start = data_start + relative
        if start + n_bytes > cur.size:
            raise ModelFormatError(
                f"{path}: tensor {name!r} ends at byte {start + n_bytes}, past the end of the {cur.size}-byte file (truncated?)"
            )
        tensors[name] = TensorInfo(name, tuple(reversed(dims)), kind, start, n_bytes)
    return GGUFHeader(version, alignment, scalars, tensors)


def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    name = cur.string("a tensor name")
    n_dims = cur.unpack("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {name!r} with {n_dims} dimensions")
    dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
    if min(dims) < 1:
        raise cur.fail(f"tensor {name!r} with an empty dimension {dims}")
    raw = cur.unpack("<I")
    from gguf.constants import GGMLQuantizationType

    try:
        kind = GGMLQuantizationType(raw)
    except ValueError:
        raise cur.fail(f"tensor {name!r} of unknown ggml type number {raw}") from None
    return name, dims, kind, cur.unpack("<Q")


def _quant_sizes() -> dict[GGMLQuantizationType, tuple[int, int]]:
    from gguf.constants import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES
