"""GGUF key/value metadata as plain Python values.

A GGUF file holds key/values (architecture, hyperparameters, the tokenizer's vocabulary) followed
by tensors. `gguf.GGUFReader` parses both; this module turns the key/values into a dict of str,
int, float, bool and lists of those, which is what `tokenizer_from_gguf` and the config loader
take. Reference: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from .errors import ModelFormatError


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
    """Open the GGUF at `path` and return its key/values (see `metadata_from_reader`)."""
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError) as exc:  # bad magic, a truncated file, an unreadable one
        raise ModelFormatError(f"cannot read GGUF {path}: {exc or type(exc).__name__}") from exc
    return metadata_from_reader(reader)
