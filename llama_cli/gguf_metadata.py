"""GGUF key/value metadata as plain Python values, read without the tensors.

A GGUF file holds key/values (architecture, hyperparameters, the tokenizer's vocabulary) followed
by tensor descriptions and data. `read_gguf_metadata` reads only the key/values, with `struct`
over a memory map and every length checked against the file size, into a dict of str, int,
float, bool and lists of those: what `tokenizer_from_gguf` and the config loader take. It needs
neither torch nor the `gguf` package, and is fast (~0.3 s for a 256k-token vocabulary, where
`gguf.GGUFReader` takes ~10 s), so a tokenizer can be inspected without loading its model.
`metadata_from_reader` gives the same dict from a `gguf.GGUFReader` already open for the weights.

Layout (little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
  "GGUF", version u32, tensor_count u64, kv_count u64, then kv_count x (key string, value type
  u32, value); a string is a u64 byte length and UTF-8 bytes; an array is an item type u32, a
  u64 count and the items. weights/gguf_header.py walks the same layout to check a whole file
  (tensors included) before the weights are read.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelFormatError

if TYPE_CHECKING:
    import gguf

MAGIC = b"GGUF"
STRING, ARRAY = 8, 9
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
MAX_NESTING = 3  # arrays of arrays: none in practice


def metadata_from_reader(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key/value of an opened GGUF, e.g. `{"tokenizer.ggml.tokens": ["<|endoftext|>", ...]}`.

    The reader's own bookkeeping fields (`GGUF.version`, `GGUF.tensor_count`, `GGUF.kv_count`)
    are left out, and so is everything about tensors. Use this when the reader is already open
    for the weights: opening a GGUF parses its whole vocabulary (~3 s for a 49k-token one).
    """
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            metadata[name] = field.contents()
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"GGUF key {name!r} holds a string that is not UTF-8: the file is corrupt") from exc
    return metadata


def read_gguf_metadata(path: Path | str) -> dict[str, Any]:
    """The key/values of the GGUF at `path` (the same dict as `metadata_from_reader`, except that
    an array of arrays stays nested, where the gguf package flattens it; no real file has one).

    Raises ModelFormatError for a file that is not a GGUF, is truncated, or claims more than it
    holds. Tensors are neither read nor checked.
    """
    return {entry.key: entry.value for entry in read_gguf_entries(path)}


@dataclass(frozen=True)
class GGUFEntry:
    key: str
    kind: int  # the GGUF value type
    item_kind: int | None  # an array's item type (None for a scalar or string)
    value: Any


def read_gguf_entries(path: Path | str) -> list[GGUFEntry]:
    """`read_gguf_metadata`'s key/values in file order, each with its value types: what a writer
    needs to copy them as stored (testing_models.py). The same checks and errors."""
    path = Path(path)
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return list(_KeyValues(buf, path).entries())
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
        raise ModelFormatError(f"cannot read GGUF {path}: {getattr(exc, 'strerror', None) or exc}") from exc


_LENGTH = struct.Struct("<Q")  # a string's byte count
_ITEM = struct.Struct("<I")  # an array's item type


class GGUFCursor:
    """Reads GGUF's little-endian values from a memory map, each length checked against the file's
    size before anything is read or allocated (weights/gguf_header.py steps through the same way)."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"cannot read GGUF {self.path}: {what} at byte {self.pos} of {self.size}: the file is truncated or corrupt")

    def take(self, n: int) -> int:
        """Step over n bytes; return where they start."""
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"a length of {n} bytes")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str) -> Any:
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self, what: str = "a string", *, errors: str = "strict") -> str:
        n = self.unpack("<Q")
        start = self.take(n)
        try:
            return self.buf[start : start + n].decode("utf-8", errors=errors)
        except UnicodeDecodeError:
            raise self.fail(f"{what} that is not UTF-8") from None

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row: string() in one loop over local names (a vocabulary is 50k-250k
        strings, and this is most of reading one), with the same checks and errors."""
        buf, pos, size, length = self.buf, self.pos, self.size, _LENGTH.unpack_from
        items: list[str] = []
        append = items.append
        try:
            for _ in range(count):
                if pos + 8 > size:
                    break
                (n,) = length(buf, pos)
                if pos + 8 + n > size:
                    break
                append(buf[pos + 8 : pos + 8 + n].decode("utf-8"))
                pos += 8 + n
        except UnicodeDecodeError:
            self.pos = pos
            raise self.fail("a string that is not UTF-8") from None
        self.pos = pos
        if len(items) < count:  # ran past the end: string() raises the usual message from here
            self.string()
        return items

    def array(self, depth: int, read: bool) -> list[Any] | None:
        """An array's items (`read`), or None after stepping over them without decoding any."""
        item, count = self.unpack("<I"), self.unpack("<Q")
        if item in SCALARS:
            start = self.take(count * struct.calcsize(SCALARS[item]))  # checked before struct sees the count
            return list(struct.unpack_from(f"<{count}{SCALARS[item][1:]}", self.buf, start)) if read else None
        if count * 8 > self.size - self.pos:  # every string or array item takes at least 8 bytes
            raise self.fail(f"an array of {count} items")
        if item == STRING:
            if read:
                return self.strings(count)
            items = [self.take(self.unpack("<Q")) for _ in range(count)]
        else:
            items = [self.value(item, depth + 1) for _ in range(count)]
        return items if read else None

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind != ARRAY or depth >= MAX_NESTING:
            raise self.fail(f"unknown value type {kind}")
        return self.array(depth, read=True)


class _KeyValues(GGUFCursor):
    def entries(self) -> Iterator[GGUFEntry]:
        if self.size < 24 or self.buf[:4] != MAGIC:
            raise ModelFormatError(f"cannot read GGUF {self.path}: not a GGUF file (it starts with {bytes(self.buf[:4])!r})")
        self.take(4)
        version = self.unpack("<I")
        if version not in (2, 3):
            raise ModelFormatError(
                f"cannot read GGUF {self.path}: version {version} is not supported (only 2 and 3; big-endian files neither)"
            )
        self.unpack("<Q")  # tensor count
        kv_count = self.unpack("<Q")
        if kv_count * 13 > self.size - self.pos:  # each: an empty key, a type, a one-byte value
            raise self.fail(f"{kv_count} key/values claimed")
        seen: set[str] = set()
        for _ in range(kv_count):
            key = self.string()
            if key in seen:
                raise self.fail(f"duplicate key {key!r}")
            seen.add(key)
            kind = self.unpack("<I")
            item_kind = _ITEM.unpack_from(self.buf, self.pos)[0] if kind == ARRAY and self.pos + 4 <= self.size else None
            yield GGUFEntry(key, kind, item_kind, self.value(kind))
