"""Regenerate the committed completion scripts: `python -m llama_cli.cli.write_completions completions/`."""

from __future__ import annotations

import sys
from pathlib import Path

from .app import root_command
from .completions import write_all

if __name__ == "__main__":
    for written in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"), root_command()):
        print(written)
