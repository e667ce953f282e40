"""Where `llama` keeps what it writes for itself: one folder, shared by the metadata cache and the kernels.

No imports from the rest of the package, so that weights/ and kernels/ can both use it without
importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$LLAMA_CACHE, else $XDG_CACHE_HOME/llama, else ~/.cache/llama."""
    if os.environ.get("LLAMA_CACHE"):
        return Path(os.environ["LLAMA_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "llama"
    return Path.home() / ".cache" / "llama"
