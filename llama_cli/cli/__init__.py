"""The `llama` command line: thin Typer commands over the Python API (app.py registers them).

`llama_cli.cli.app` is the Typer app and `llama_cli.cli.main` the console script's entry point.
"""

from __future__ import annotations

import signal
import sys

if sys.argv and sys.argv[0].endswith("/llama") and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # The `llama` script imports this package before `main` runs: Ctrl-C during these imports exits
    # 130 quietly (as `python -m llama_cli` does); `main` restores Python's handler.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

from .app import app, main

__all__ = ["app", "main"]
