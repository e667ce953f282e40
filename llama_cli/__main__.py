"""`python -m llama_cli` runs the same CLI as the `llama` command."""

import signal
import sys

# Ctrl-C while the CLI's modules import (a second or two on a busy machine): exit 130 quietly, as
# at any later point; `main` puts Python's own handler back before any command runs.
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

from .cli import main

main()
