"""The `llama` command line: thin Typer commands over the Python API (app.py registers them).

`llama_cli.cli.app` is the Typer app (every command, built on first use) and `llama_cli.cli.main`
the console script's entry point (which builds only the command it runs).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

if sys.argv and sys.argv[0].endswith("/llama") and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # The `llama` script imports this package before `main` runs: Ctrl-C during these imports exits
    # 130 quietly (as `python -m llama_cli` does); `main` restores Python's handler.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

from .app import main

del app  # noqa: F821 (the name the import gave the module app.py: `app` here is its Typer app, below)


def __getattr__(name: str) -> Any:
    if name == "app":
        from .app import whole_app

        return whole_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
