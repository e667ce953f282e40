"""Errors the CLI turns into one line on stderr and an exit code (never a traceback).

Library code raises these with a message that says what was wrong and what to do about it.
"""

from __future__ import annotations


class LlamaError(Exception):
    """A failure the user can act on; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(LlamaError):
    """Bad options or arguments (exit 2, like Typer's own usage errors)."""

    exit_code = 2


class ModelNotFoundError(LlamaError):
    """No model at the given path or name, or the default model is not installed."""


class ModelFormatError(LlamaError):
    """A model file exists but is unreadable: truncated, corrupt, unsupported architecture or quant type."""


class TokenizerError(LlamaError):
    """The tokenizer files are missing or unusable, or text cannot be encoded."""


class ContextOverflowError(LlamaError):
    """The prompt (plus the tokens asked for) does not fit the model's context window."""
