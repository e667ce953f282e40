"""Incremental detokenization (text for each generated token, as it arrives) and token display.

Decoding one token at a time is wrong in two ways: a UTF-8 character can be split across byte
tokens (emoji, CJK), and sentencepiece drops the leading space of whatever comes first in a
decode call. So each step decodes a short window that starts a few tokens back and emits only
what the new tokens added -- the prefix/read offsets of vLLM's `detokenize_incrementally`
(vllm/transformers_utils/detokenizer_utils.py) and of Hugging Face's `TextStreamer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Vocabulary(Protocol):
    """What this module reads of a tokenizer (tokenizer.Tokenizer is one; tokenizer.py imports
    this module, so it names the methods it needs instead of importing that class)."""

    def decode(self, ids: Sequence[int]) -> str: ...

    def is_special(self, token_id: int) -> bool: ...

    def piece(self, token_id: int) -> str: ...


# Tokens of context kept before the first generated one: enough to hold a whole UTF-8 character
# in byte tokens and a word before it, so its leading space decodes as it will in the full text.
_CONTEXT_TOKENS = 6
_INCOMPLETE = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


class StreamDecoder:
    """Turns ids into text pieces as they arrive.

    The concatenation of all pieces from `push` and `flush` equals
    `tokenizer.decode(context + ids)[len(tokenizer.decode(context)):]`: characters split across
    tokens are held back until complete, and the first token after the context keeps its leading
    space. Special (control) tokens produce "" and do not enter the window, since `decode` skips
    them too. Each step decodes a few tokens, whatever the length of the text so far.

    Not handled: a `context` that itself ends inside a UTF-8 character (its decode then ends in
    U+FFFD, and the reference slice above is not well defined either).
    """

    def __init__(self, tokenizer: Vocabulary, context: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids = [i for i in context if not tokenizer.is_special(i)][-_CONTEXT_TOKENS:]  # the window
        self._read = len(self._ids)  # ids before this are emitted (or context); the rest are held back
        self._prefix_text = tokenizer.decode(self._ids)  # the window's text up to _read

    def push(self, token_id: int) -> str:
        """The text `token_id` completes; "" while a character is incomplete or for a special token."""
        if self._tokenizer.is_special(token_id):
            return ""
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids)
        if len(text) <= len(self._prefix_text) or text.endswith(_INCOMPLETE):
            return ""  # nothing new yet, or a multi-byte character is still arriving
        return self._advance(text)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD, as in `decode`)."""
        if self._read == len(self._ids):
            return ""
        return self._advance(self._tokenizer.decode(self._ids))

    def _advance(self, text: str) -> str:
        new = text[len(self._prefix_text) :]
        # The next window starts where this one's new tokens began (vLLM's prefix offset).
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._prefix_text = self._tokenizer.decode(self._ids)
        return new


def mark_special(tokenizer: Vocabulary, ids: Sequence[int], *, mark: str = "[{}]") -> str:
    """Decoded text with every special token written out as `mark` (so template problems show)."""
    out: list[str] = []
    run: list[int] = []
    for token in [*ids, None]:
        if token is not None and not tokenizer.is_special(token):
            run.append(token)
            continue
        if run:
            out.append(tokenizer.decode(run))
            run = []
        if token is not None:
            out.append(mark.format(tokenizer.piece(token)))
    return "".join(out)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character ("Ġ" is the space)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


_UNICODE_TO_BYTE = {c: b for b, c in _byte_to_unicode().items()}


def byte_level_text(token: str) -> str:
    """A byte-level BPE token ("ĠParis") as text (" Paris") for display; bytes that are not a
    whole character are written as "<0xF0>", like sentencepiece's byte pieces."""
    data = bytes(_UNICODE_TO_BYTE.get(c, 0x3F) for c in token)
    # surrogateescape turns each undecodable byte into U+DC80..U+DCFF.
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in data.decode("utf-8", "surrogateescape"))
