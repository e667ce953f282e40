"""Cutting text of any length into chunks that fit a token budget, and into sentences.

Text is cut at paragraph breaks, else line breaks, else sentence ends, else spaces (else, for a
run of text with no space at all, at any character); the chunks cover every character of the
input, so nothing is dropped silently.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Count = Callable[[str], int]

MARGIN = 8  # tokens kept free: counts of joined pieces can differ slightly from the sum of their parts
MAX_CHUNKS = 256  # summarize/translate refuse more chunks than this unless --max-chunks says otherwise (hours of work)
MIN_CHUNK = 32  # a context that leaves less room than this per chunk is too small to be useful
# Cut points, coarsest first; each cut falls after the separator, so chunks keep their whitespace.
SEPARATORS = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"\n\s*"), re.compile(r"(?<=[.!?;:。！？])\s+"), re.compile(r"\s+"))
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n\s*")
BLANK_LINE = re.compile(r"\n[ \t]*\n")
# Where a whole sentence (or line) ends: closing punctuation and any quotes or brackets after it,
# then whitespace; or a line break. An answer cut at -n is cut back to the last one.
WHOLE_SENTENCE_END = re.compile(r"[.!?。！？][\"'”’)\]]*(?=\s)|[.!?。！？][\"'”’)\]]*$|(?=\n)")


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # character offsets in the input: chunk i ends where chunk i+1 starts
    end: int
    text: str  # input[start:end], surrounding whitespace included
    tokens: int  # of the text without its surrounding whitespace


def split_text(text: str, max_tokens: int, count: Count, *, merge_paragraphs: bool = True) -> list[Chunk]:
    """Consecutive chunks covering all of `text`, each at most `max_tokens` tokens (without its whitespace).

    Pieces are merged back up to `max_tokens`; with `merge_paragraphs=False` every paragraph stays
    a chunk of its own (long ones are still split), and so does every line that is a unit of its
    own (see `line_units`): that is how translate keeps the layout.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    spans = _split(text, 0, len(text), 0, max_tokens, count, merge=merge_paragraphs)
    return [Chunk(i, s, e, text[s:e], n) for i, (s, e, n) in enumerate(spans)]


def _split(text: str, start: int, end: int, level: int, budget: int, count: Count, *, merge: bool) -> list[tuple[int, int, int]]:
    tokens = count(text[start:end].strip())
    if tokens <= budget and (merge or level > 0):
        return [(start, end, tokens)]
    if level == len(SEPARATORS):
        return _cut_anywhere(text, start, end, budget, count)
    pieces: list[tuple[int, int, int]] = []
    for s, e in _cuts(text, start, end, SEPARATORS[level]):
        pieces.extend(_split(text, s, e, level + 1, budget, count, merge=True))
    if not merge and level == 0:
        units = [unit for s, e, _ in pieces for unit in line_units(text, s, e)]
        return [(a, b, count(text[a:b].strip())) for a, b in units]
    return _pack(text, pieces, budget, count)


def _cuts(text: str, start: int, end: int, separator: re.Pattern[str]) -> list[tuple[int, int]]:
    """text[start:end] cut after each separator; whitespace-only pieces join their neighbour."""
    bounds = [start] + [m.end() for m in separator.finditer(text, start, end) if start < m.end() < end] + [end]
    spans = [(a, b) for a, b in itertools.pairwise(bounds) if a < b]
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and not text[merged[-1][0] : merged[-1][1]].strip():
            merged[-1] = (merged[-1][0], b)  # a leading blank piece joins the next one
        else:
            merged.append((a, b))
    return merged


def _cut_anywhere(text: str, start: int, end: int, budget: int, count: Count) -> list[tuple[int, int, int]]:
    """Text without usable separators: cut at the longest prefix that fits (binary search on characters)."""
    out: list[tuple[int, int, int]] = []
    while start < end:
        lo, hi = start + 1, end
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[start:mid].strip()) <= budget:
                lo = mid
            else:
                hi = mid - 1
        out.append((start, lo, count(text[start:lo].strip())))
        start = lo
    return out


def pack(sizes: Sequence[int], budget: int, *, joiner: int = 1) -> list[list[int]]:
    """Group consecutive items (by index) so that each group's sizes, plus `joiner` between items, fit `budget`."""
    groups: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if groups and total + joiner + size <= budget:
            groups[-1].append(i)
            total += joiner + size
        else:
            groups.append([i])
            total = size
    return groups


def _pack(text: str, pieces: list[tuple[int, int, int]], budget: int, count: Count) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    queue = [[pieces[i] for i in group] for group in pack([n for _, _, n in pieces], budget)]
    while queue:
        group = queue.pop(0)
        start, end = group[0][0], group[-1][1]
        tokens = count(text[start:end].strip()) if len(group) > 1 else group[0][2]
        if tokens > budget:  # rare: the joined text counts more than its parts; give back the last piece
            queue[:0] = [group[:-1], group[-1:]]
            continue
        out.append((start, end, tokens))
    return out


# A line break inside a sentence (hard-wrapped text: licences, READMEs, e-mail): not after closing
# punctuation or a colon, and not before a blank line, a list item, a heading or a quote.
WRAPPED_LINE_BREAK = re.compile(r"(?<![.!?:。！？\n])[ \t]*\n[ \t]*(?!\n|[-*•#>]|\d+[.)]\s)")


def line_units(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """text[start:end] cut after each line break that ends a unit of its own (a list item, a line of
    verse or of an address, a sentence that ends the line); hard-wrapped lines, whose breaks fall
    inside a sentence (WRAPPED_LINE_BREAK), stay together. The pieces cover every character."""
    body = text[start:end].strip()
    lo = start + text[start:end].index(body) if body else start
    hi = lo + len(body)
    wrapped = {m.start() + m.group().index("\n") for m in WRAPPED_LINE_BREAK.finditer(text, lo, hi)}
    cuts = [i + 1 for i in range(lo, hi) if text[i] == "\n" and i not in wrapped]
    bounds = [start, *cuts, end]
    return [(a, b) for a, b in itertools.pairwise(bounds) if a < b]


def sentences(text: str) -> list[str]:
    """The sentences of `text`, hard-wrapped lines joined with a space (otherwise verbatim)."""
    return [s.strip() for s in SENTENCE_END.split(WRAPPED_LINE_BREAK.sub(" ", text)) if s.strip()]


def whole_sentences(text: str) -> str:
    """`text` up to the end of its last whole sentence or line; all of it when none ends in it."""
    ends = [m.end() for m in WHOLE_SENTENCE_END.finditer(text) if m.end() > 0]
    return text[: ends[-1]].rstrip() if ends else text
