"""Text in and out: bytes from files and pipes as text (binary or non-UTF-8 input is an error, never
mojibake), and model text to stdout as it is produced."""

from __future__ import annotations

import sys

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


def write_out(text: str) -> None:
    """Model text to stdout, flushed at once so pipes see it as it is produced."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
