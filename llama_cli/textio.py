"""Text in and out: bytes from files and pipes as text (binary or non-UTF-8 input is an error, never
mojibake), and model text to stdout as it is produced."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .errors import LlamaError


def decode_text(data: bytes, name: str, *, error: type[LlamaError] = LlamaError) -> str:
    """`data` (the contents of `name`) as text; a UTF-8 byte-order mark is dropped."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise error(f"{name} looks binary (a NUL byte at offset {nul}); give a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{name} is not valid UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); convert it, e.g. with iconv -f "
            "latin1 -t utf-8"
        ) from None


def read_json_object(path: Path, *, error: type[LlamaError] = LlamaError) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else (unreadable, not JSON, nested too deeply
    for the parser, not an object) is `error` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {path}: {exc}") from exc
    except RecursionError:
        raise error(f"cannot read {path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def write_out(text: str) -> None:
    """Model text to stdout, flushed at once so pipes see it as it is produced."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
