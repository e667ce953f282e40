"""A cache of what is slow to read from a GGUF besides its weights: config, tokenizer, chat template.

Reading a GGUF's metadata takes seconds (`gguf.GGUFReader` parses every vocabulary string). The
result is written once, a few megabytes, as a folder under `cache_root()/gguf/<stem>-<key>`,
where the key hashes the GGUF's resolved path, size, mtime_ns and CONVERTER_VERSION. The weights
are never cached: they are memory-mapped from the GGUF itself on every run (gguf.py), still
quantized. An entry holds llama.json (the config), the tokenizer files, chat_template.jinja and
origin.json (key, source path, quantization label).

An entry is written into a temporary folder beside it and renamed into place, so a crash leaves
at worst a `.tmp-*` folder, which lookups never use and later writes sweep away. Writing an
entry removes the older entries of the same source file (it changed since), so they do not pile
up; `llama cache prune` removes entries whose file is gone or changed, and old-format entries.
When the cache cannot be written (unwritable root, full disk) a CacheWarning is issued and the
model loads uncached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ModelConfig
from ..errors import LlamaError, ModelFormatError
from ..paths import cache_root
from .common import Checkpoint, read_json
from .native import NATIVE_CONFIG, ORIGIN

if TYPE_CHECKING:
    from .gguf_header import GGUFHeader
    from .gguf_info import GGUFModelInfo

CONVERTER_VERSION = 2  # bump when an entry's contents change: old entries are then ignored (and pruned)
STALE_TEMP_SECONDS = 3600


class CacheWarning(UserWarning):
    """The metadata cache could not be used; the model still loads."""


def cache_key(path: Path) -> str:
    """Identity of a GGUF file as a string: resolved path, size, mtime_ns, converter version."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{CONVERTER_VERSION}"


def entry_path(key: str, gguf_path: Path) -> Path:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{digest}"


def load_gguf_cached(path: Path, *, cache: bool = True) -> Checkpoint:
    """The GGUF at `path` with its weights memory-mapped; metadata through the cache unless `cache` is False.

    gguf.py is imported when first needed: the gguf package takes ~0.1 s to import, torch ~2 s."""
    from .gguf import checkpoint_from
    from .gguf_header import scan_header

    header = scan_header(path)
    return checkpoint_from(path, header, gguf_model_info(path, header, cache=cache))


def gguf_model_info(path: Path, header: GGUFHeader, *, cache: bool = True) -> GGUFModelInfo:
    """Config, tokenizer, chat template and storage type of the GGUF at `path`, from the cache when it has
    them (and then written to it, unless `cache` is False); no torch for a file without rope factors."""
    from .gguf_info import read_model_info

    if not cache:
        return read_model_info(path, header)
    key = cache_key(path)  # taken before reading: a file replaced meanwhile gets a new entry next time
    entry = entry_path(key, path)
    info = _read_entry(entry, key)
    if info is None:
        info = read_model_info(path, header)
        try:
            _write_entry(entry, key, path, info)
        except (OSError, LlamaError) as exc:
            message = (
                f"cannot cache the model's metadata under {cache_root()} ({exc}); running uncached: set LLAMA_CACHE to a writable folder"
            )
            warnings.warn(CacheWarning(message), stacklevel=3)
    return info


def _read_entry(entry: Path, key: str) -> GGUFModelInfo | None:
    """The cached metadata, or None when there is no usable entry (a damaged one is removed, with a warning)."""
    from ..tokenizer import chat_template_from_folder, load_tokenizer
    from .gguf_info import GGUFModelInfo

    if not entry.exists():
        return None
    try:
        origin = read_json(entry / ORIGIN)
        if origin.get("key") != key:
            raise ModelFormatError(f"{entry / ORIGIN} belongs to another file")
        config = ModelConfig.from_dict(read_json(entry / NATIVE_CONFIG))
        return GGUFModelInfo(config, load_tokenizer(entry), chat_template_from_folder(entry), str(origin.get("quantization", "?")))
    except (LlamaError, OSError, TypeError, ValueError, UnicodeDecodeError) as exc:
        warnings.warn(CacheWarning(f"removing damaged cache entry {entry} ({exc}); reading the GGUF again"), stacklevel=3)
        _remove(entry)
        return None


def _write_entry(entry: Path, key: str, source: Path, info) -> None:  # type: ignore[no-untyped-def]
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(root)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=root))
    try:
        (temp / NATIVE_CONFIG).write_text(info.config.to_json() + "\n", encoding="utf-8")
        info.tokenizer.save(temp)
        if info.chat_template is not None:
            (temp / "chat_template.jinja").write_text(info.chat_template, encoding="utf-8")
        origin = {"key": key, "source": str(source.resolve()), "format": "gguf", "quantization": info.quantization}
        (temp / ORIGIN).write_text(json.dumps(origin, indent=1) + "\n", encoding="utf-8")
        try:
            os.rename(temp, entry)
        except OSError:
            if not (entry / ORIGIN).is_file():  # else another process won the race with the same file
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    for other in list_entries():  # older entries of the same file: it changed since they were written
        if other.path != entry and other.source == str(source.resolve()):
            _remove(other.path)


# ---------------------------------------------------------------- `llama cache`: list, prune, clear


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int  # bytes on disk
    source: str | None  # the GGUF it describes (None: unreadable or a temporary folder)
    state: str  # "current", "stale" (file changed or gone, an older format, an old kernel build), "temporary", "kernels"


def list_entries() -> list[CacheEntry]:
    """Every entry under the cache root: GGUF metadata entries, temporary folders, built kernels."""
    root = cache_root()
    entries: list[CacheEntry] = []
    gguf_root = root / "gguf"
    for path in sorted(gguf_root.iterdir()) if gguf_root.is_dir() else []:
        if path.name.startswith(".tmp-"):
            entries.append(CacheEntry(path, _size(path), None, "temporary"))
            continue
        source, state = None, "stale"
        try:
            origin = read_json(path / ORIGIN)
            key = str(origin.get("key", ""))
            source = origin.get("source") or key.split("|")[0] or None
            if source and Path(source).is_file() and cache_key(Path(source)) == key:
                state = "current"
        except (LlamaError, OSError):
            pass
        entries.append(CacheEntry(path, _size(path), source, state))
    kernels = root / "kernels"
    current = _current_kernel_build()
    for path in sorted(kernels.iterdir()) if kernels.is_dir() else []:
        state = "kernels" if current is None or path.name == current else "stale"  # built from older sources or another compiler
        entries.append(CacheEntry(path, _size(path), None, state))
    return entries


def _current_kernel_build() -> str | None:
    """The folder name the kernels of this version, compiler and CPU build into (None: unknown)."""
    try:
        from ..kernels._build import _build_key, _compiler

        return _build_key(_compiler())
    except Exception:  # noqa: BLE001 (no compiler, or anything else: then no build counts as stale)
        return None


def prune() -> list[CacheEntry]:
    """Remove stale and temporary entries (not ones in use: temporaries younger than an hour stay); return them."""
    removed = []
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in list_entries():
        if entry.state == "stale" or (entry.state == "temporary" and entry.path.stat().st_mtime < cutoff):
            _remove(entry.path) if entry.state == "stale" else shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry)
    return removed


def clear() -> list[CacheEntry]:
    """Remove every entry (built kernels included: they are rebuilt on the next run)."""
    entries = list_entries()
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
    return entries


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
