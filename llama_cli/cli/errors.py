"""Every failure as one line on stderr and an exit code, never a traceback.

The contract: model text goes to stdout, flushed as it is produced; everything else (errors,
warnings, stats, progress) goes to stderr. Errors are one line and an exit code: 2 for usage, 1
for runtime failures, 130 when interrupted, 141 when stdout was closed (as a Unix tool killed by
SIGPIPE). LLAMA_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import string
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import LlamaError, fill

try:
    from typer._click import exceptions as click_errors  # newer Typer vendors click
except ImportError:  # pragma: no cover - older Typer uses click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("LLAMA_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `llama: error: message` on stderr and return the Exit to raise.

    Always one line: a newline or carriage return inside (a file name can hold one) is escaped."""
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")
    print(f"llama: error: {one_line}", file=sys.stderr, flush=True)
    return typer.Exit(code)


# Fields whose flag is not "--" + the field's name with dashes (errors.LlamaError.naming: errors name fields).
FLAG_NAMES = {
    "repetition_penalty": "--repeat-penalty",
    "n_layers": "--layers",
    "n_heads": "--heads",
    "n_kv_heads": "--kv-heads",
    "context_length": "--ctx",
    "context": "--ctx",
    "tokenizer_kind": "--tokenizer-type",
    "json_object": "--json-output",
    "rank": "--lora-rank",  # finetune's LoRAConfig fields
    "alpha": "--lora-alpha",
    "targets": "--lora-targets",
    "target": "--to",  # translate's language
}


def flag_for(field: str) -> str:
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def as_flags(template: str) -> str:
    """A naming template (errors.LlamaError.naming) with each field written as its flag."""
    return fill(template, {name: flag_for(name) for _, name, _, _ in string.Formatter().parse(template) if name})


def message(error: LlamaError) -> str:
    """The error's line, with settings' field names written as the flags that set them."""
    return error.render({name: flag_for(name) for name in error.fields})


def quiet_broken_pipe() -> typer.Exit:
    # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return typer.Exit(141)


def handles_errors(command: F) -> F:
    """Turn LlamaError, Ctrl-C, a closed stdout and unexpected errors into one line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click_errors.ClickException):
            raise  # exits and usage errors are click's to report
        except LlamaError as error:
            if debug_enabled():
                raise
            raise fail(message(error), error.exit_code) from None
        except KeyboardInterrupt:
            print("llama: interrupted", file=sys.stderr, flush=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise quiet_broken_pipe() from None
        except Exception as error:  # a bug: still one line unless debugging
            if debug_enabled():
                raise
            raise fail(f"internal error: {type(error).__name__}: {error} (set LLAMA_DEBUG=1 for the traceback)") from None

    return wrapper  # type: ignore[return-value]
