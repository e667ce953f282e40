"""`python -m llama_cli` runs the same CLI as the `llama` command."""

from .cli import main

main()
