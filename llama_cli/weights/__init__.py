"""Load a model from disk, whatever its format, as a `Checkpoint` under the internal weight names.

    checkpoint = load_checkpoint(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))
    model = Transformer(checkpoint.config); model.load_state_dict(checkpoint.weights)

Formats, by what the path is:
- a `.gguf` file (architecture llama), or a folder holding exactly one: gguf.py, cached by cache.py;
- a folder with llama.json: our native format (native.py), what the cache and training write;
- a folder with config.json and safetensors: a Hugging Face Llama checkpoint (huggingface.py);
- a folder with params.json and consolidated.*.pth: a Meta checkpoint (meta.py).
A file inside such a folder (config.json, model.safetensors, ...) loads its folder.
Importing this package does not import torch; loading the tensors does. `gguf_file` and
`describe_folder` say what a model is without loading it (gguf_info.py, folder_info.py: `llama show`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelFormatError, ModelNotFoundError
from .cache import CacheWarning, cache_root, load_gguf_cached
from .common import Checkpoint
from .gguf_header import MAGIC
from .native import NATIVE_CONFIG, load_native, save_native

if TYPE_CHECKING:
    from .folder_info import FolderModelInfo

__all__ = ["CacheWarning", "Checkpoint", "cache_root", "describe_folder", "load_checkpoint", "save_native"]

LOOKED_FOR = "llama.json (native), config.json + *.safetensors (Hugging Face), params.json + consolidated.*.pth (Meta), or one *.gguf file"
FOLDER_FILES = (NATIVE_CONFIG, "config.json", "params.json", "model.safetensors.index.json")
FOLDER_SUFFIXES = (".safetensors", ".pth")


def load_checkpoint(path: Path, *, cache: bool = True) -> Checkpoint:
    """Load the model at `path` (a GGUF file or a model folder); `cache=False` bypasses the GGUF cache.

    Raises ModelNotFoundError when there is no model there, ModelFormatError when there is one
    that cannot be used (truncated, corrupt, another architecture, an unsupported quant type).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"no model at {path}: the path does not exist")
    if path.is_dir():
        return _load_folder(path, cache=cache)
    if not path.is_file():  # a FIFO or a device would block in open() or read for ever
        raise ModelFormatError(f"{path}: not a regular file or a folder")
    if path.suffix.lower() == ".gguf" or _starts_with_magic(path):
        return load_gguf_cached(path, cache=cache)
    if path.name in FOLDER_FILES or path.suffix.lower() in FOLDER_SUFFIXES:
        return _load_folder(path.parent, cache=cache)
    raise ModelFormatError(f"{path}: not a model file; expected a .gguf file or a model folder ({LOOKED_FOR})")


def gguf_file(path: Path) -> Path | None:
    """The GGUF file `load_checkpoint(path)` reads, or None for a model in another format (or none at all)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" or _starts_with_magic(path) else None
    if not path.is_dir() or any((path / name).is_file() for name in (NATIVE_CONFIG, "config.json", "params.json")):
        return None
    ggufs = [p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file()]
    return ggufs[0] if len(ggufs) == 1 else None


def describe_folder(path: Path) -> FolderModelInfo | None:
    """What the native, Hugging Face or Meta folder `load_checkpoint(path)` would load holds, read
    without torch (folder_info.py); None for anything else (a GGUF, no model, a Meta shard in
    torch's pre-1.6 format): load those."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    if folder is not path and not (path.is_file() and (path.name in FOLDER_FILES or path.suffix.lower() in FOLDER_SUFFIXES)):
        return None
    if not any((folder / name).is_file() for name in (NATIVE_CONFIG, "config.json", "params.json")):
        return None
    from .folder_info import read_folder_info
    from .tensor_shapes import NotReadableWithoutTorch

    try:
        return read_folder_info(folder)
    except NotReadableWithoutTorch:
        return None


def _load_folder(folder: Path, *, cache: bool) -> Checkpoint:
    if (folder / NATIVE_CONFIG).is_file():
        return load_native(folder)
    if (folder / "config.json").is_file():
        from .huggingface import load_huggingface

        return load_huggingface(folder)
    if (folder / "params.json").is_file():
        from .meta import load_meta

        return load_meta(folder)
    ggufs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(ggufs) == 1:
        return load_gguf_cached(ggufs[0], cache=cache)
    if ggufs:
        names = ", ".join(p.name for p in ggufs[:5])
        raise ModelNotFoundError(f"{folder} holds several GGUF files ({names}); name the one to load")
    raise ModelNotFoundError(f"no model in {folder}: looked for {LOOKED_FOR}")


def _starts_with_magic(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == MAGIC
    except OSError:
        return False
