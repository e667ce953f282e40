"""Where commands read their text: an argument, files, or stdin (never a terminal's, silently)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import LlamaError, UsageError
from ..textio import decode_text


def read_stdin_text() -> str:
    """All of stdin as text; binary or non-UTF-8 input is an error, not mojibake."""
    return decode_text(sys.stdin.buffer.read(), "stdin")


def read_documents(paths: list[str] | None, *, option: str = "FILE") -> str:
    """The files in order (stdin for none or '-'), joined by a blank line. Empty input is an error."""
    texts = []
    for path in paths or ["-"]:
        if path == "-":
            if sys.stdin.isatty():
                raise UsageError(f"give a {option} or pipe text on stdin")
            texts.append(decode_text(sys.stdin.buffer.read(), "stdin"))
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise LlamaError(f"cannot read {path}: {error.strerror or error}") from None
        texts.append(decode_text(data, path))
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        raise LlamaError(f"the input is empty ({', '.join(paths or ['stdin'])}): give some text to work on")
    return text


def prompt_from(argument: str | None, *, what: str = "prompt") -> str:
    """The argument, or stdin when the argument is '-' or absent and stdin is not a terminal."""
    if argument is not None and argument != "-":
        return argument
    if argument is None and sys.stdin.isatty():
        raise typer.BadParameter(f"give a {what} as an argument, or pipe it on stdin")
    return read_stdin_text()


def read_tools(path: str | None, *, chat: bool):  # type: ignore[no-untyped-def]
    """The tool schemas in `path` (None without one); tools reach the model only through a chat template."""
    if path is None:
        return None
    if not chat:
        raise UsageError("--tools goes with --chat (tools reach the model through its chat template)")
    from ..conversation import read_tools as read_tool_file

    return read_tool_file(path)
