"""A cache of converted GGUFs, so only the first run pays for parsing and dequantizing.

Converting a GGUF takes seconds (the reader parses every vocabulary string; dequantizing every
tensor). The result is written once as a native folder (huggingface.py) under
`cache_root()/gguf/<stem>-<key>`, where the key hashes the GGUF's resolved path, size, mtime_ns and
CONVERTER_VERSION; later runs memory-map its model.safetensors and never open the GGUF.

An entry is written into a temporary folder beside it and renamed into place, so a crash leaves
at worst a `.tmp-*` folder, which lookups never use (and later writes sweep away). When the cache
cannot be written (unwritable root, full disk) a CacheWarning is issued and the model runs uncached.
Old entries of a GGUF that has since changed are not removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from safetensors import SafetensorError

from ..errors import LlamaError, ModelFormatError
from .common import Checkpoint
from .huggingface import ORIGIN, load_native, load_safetensors, read_json, save_native

CONVERTER_VERSION = 1  # bump when conversion output changes: old entries are then ignored
STALE_TEMP_SECONDS = 3600


class CacheWarning(UserWarning):
    """The converted-weights cache could not be used; the model still loads."""


def cache_root() -> Path:
    """$LLAMA_CACHE, else $XDG_CACHE_HOME/llama, else ~/.cache/llama."""
    if os.environ.get("LLAMA_CACHE"):
        return Path(os.environ["LLAMA_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "llama"
    return Path.home() / ".cache" / "llama"


def cache_key(path: Path) -> str:
    """Identity of a GGUF file as a string: resolved path, size, mtime_ns, converter version."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{CONVERTER_VERSION}"


def entry_path(key: str, gguf_path: Path) -> Path:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{digest}"


def load_gguf(path: Path) -> Checkpoint:
    """gguf.py's conversion, imported when first needed: the gguf package takes ~0.1 s to import,
    and runs served from the cache never need it."""
    from .gguf import load_gguf as convert

    return convert(path)


def load_gguf_cached(path: Path, *, cache: bool = True) -> Checkpoint:
    """`load_gguf(path)`, through the cache unless `cache` is False (then nothing is read or written)."""
    if not cache:
        return load_gguf(path)
    key = cache_key(path)  # taken before converting: a file replaced meanwhile gets a new entry next time
    entry = entry_path(key, path)
    cached = _read_entry(entry, key, path)
    if cached is not None:
        return cached
    checkpoint = load_gguf(path)
    try:
        _write_entry(entry, key, checkpoint)
        # Run from the memory-mapped entry, as later runs will; the dequantized copies are freed.
        return dataclasses.replace(checkpoint, weights=load_safetensors(entry))
    except (OSError, SafetensorError, LlamaError) as exc:
        message = f"cannot cache the converted model under {cache_root()} ({exc}); running uncached, set LLAMA_CACHE to a writable folder"
        warnings.warn(CacheWarning(message), stacklevel=2)
    return checkpoint


def _read_entry(entry: Path, key: str, gguf_path: Path) -> Checkpoint | None:
    """The cached checkpoint, or None when there is no usable entry (a damaged one is removed)."""
    if not entry.exists():
        return None
    try:
        if read_json(entry / ORIGIN).get("key") != key:
            raise ModelFormatError(f"{entry / ORIGIN} belongs to another file")
        checkpoint = load_native(entry)
    except LlamaError as exc:
        warnings.warn(CacheWarning(f"removing damaged cache entry {entry} ({exc}); converting again"), stacklevel=3)
        _remove(entry)
        return None
    return dataclasses.replace(checkpoint, source=gguf_path, format="gguf")


def _write_entry(entry: Path, key: str, checkpoint: Checkpoint) -> None:
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(root)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=root))
    try:
        origin = {"key": key, "format": checkpoint.format, "quantization": checkpoint.quantization}
        save_native(temp, checkpoint.config, checkpoint.weights, checkpoint.tokenizer, checkpoint.chat_template, origin=origin)
        try:
            os.rename(temp, entry)
        except OSError:
            if not (entry / ORIGIN).is_file():  # else another process won the race with the same conversion
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _remove(entry: Path) -> None:
    """Move an entry aside (atomically: readers never see half of it), then delete it."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-old-", dir=entry.parent))
        os.rename(entry, trash / "entry")
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _sweep_stale_temps(root: Path) -> None:
    """Remove `.tmp-*` folders left by crashed conversions (older than an hour: not in progress)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for temp in root.glob(".tmp-*"):
        try:
            if temp.stat().st_mtime < cutoff:
                shutil.rmtree(temp, ignore_errors=True)
        except OSError:
            continue
