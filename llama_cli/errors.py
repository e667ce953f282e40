"""Errors the CLI turns into one line on stderr and an exit code (never a traceback).

Library code raises these with a message that says what was wrong and what to do about it.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import TypeVar

E = TypeVar("E", bound="LlamaError")


class LlamaError(Exception):
    """A failure the user can act on; `exit_code` is what the CLI exits with.

    `naming(template)` makes one whose message names settings by their field: the template
    `{max_tokens} must be >= 1` reads `max_tokens must be >= 1` to a Python caller, and the CLI
    writes each field as the flag that sets it (`--max-tokens must be >= 1`; cli/errors.py maps
    them once). Other braces in a template are doubled, as in str.format: `literal(value)`.
    """

    exit_code = 1
    template: str | None = None  # set by `naming`

    @classmethod
    def naming(cls: type[E], template: str) -> E:  # noqa: PYI019 (Python 3.10 has no typing.Self)
        error = cls(fill(template, {}))
        error.template = template
        return error

    @property
    def fields(self) -> list[str]:
        """The field names the message mentions (none for a plain message)."""
        return [] if self.template is None else [name for _, name, _, _ in string.Formatter().parse(self.template) if name]

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each field written as `names` says (the field's own name when absent)."""
        return str(self) if self.template is None else fill(self.template, names)


def fill(template: str, names: Mapping[str, str]) -> str:
    """`template` with each `{field}` written as `names` says (the field's own name when absent)."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return template.format_map({name: names.get(name, name) for name in fields})


def literal(text: object) -> str:
    """`text` (a path, a value the user gave) inside a `naming` template, where braces name fields."""
    return str(text).replace("{", "{{").replace("}", "}}")


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
