"""Inputs of any length for the presets: count tokens, split, and run the recipes chunk by chunk.

Input that fits the context window (with room for the answer) is sent whole. Longer input is cut
into consecutive chunks at paragraph breaks, else line breaks, else sentence ends, else spaces
(else, for a run of text with no space at all, at any character); the chunks cover every
character of the input, so nothing is dropped silently. Then:

- summarize maps each chunk to a partial summary and reduces the partial summaries, in order,
  to one summary (in several rounds when they do not fit together);
- translate goes paragraph by paragraph (long paragraphs chunk by chunk) and joins the
  translations with the input's own whitespace, so the layout is kept whatever the model does;
- qa ranks the chunks by BM25 against the question and answers from the best ones that fit,
  saying on stderr how many were left out.

Each preset is a generator of `Step`s: the caller runs (or streams) `step.generation` between
steps, and the generator reads its text when it resumes. Reference for BM25: Robertson and
Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond" (2009).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .chat_template import Message
from .errors import LlamaError, UsageError
from .presets import CANNOT_TELL, COMBINE, QA, SUMMARIZE, SUMMARIZE_PART, TRANSLATE, Recipe, points, points_spec

if TYPE_CHECKING:
    from .api import LLM
    from .generation import Generation, GenerationSettings
    from .schema import Spec

Stage = Literal["summarize", "map", "reduce", "translate", "answer"]
Count = Callable[[str], int]

MARGIN = 8  # tokens kept free: counts of joined pieces can differ slightly from the sum of their parts
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
    a chunk of its own (long ones are still split), which is how translate keeps the layout.
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
        return pieces
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


# --- BM25 ranking -----------------------------------------------------------------------------

STOPWORD_TEXT = (
    "a an and are as at be been by did do does for from had has have he her his how i if in into is it its "
    "me my no not of on or our she so than that the their them then there these they this to was we were "
    "what when where which who whom why will with you your"
)
STOPWORDS = frozenset(STOPWORD_TEXT.split())


def terms(text: str) -> list[str]:
    """Lower-cased words without stop words, crudely stemmed (completed, completes -> complet)."""
    out = []
    for word in re.findall(r"\w+", text.lower()):
        if word in STOPWORDS:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


def bm25_scores(query: str, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each document for the query's terms (0 when none occurs)."""
    docs = [Counter(terms(d)) for d in documents]
    lengths = [sum(d.values()) for d in docs]
    average = (sum(lengths) / len(docs) if docs else 0) or 1.0
    df = Counter(t for d in docs for t in d)
    wanted = set(terms(query))
    scores = []
    for doc, length in zip(docs, lengths):
        score = 0.0
        for term in wanted & doc.keys():
            idf = math.log((len(docs) - df[term] + 0.5) / (df[term] + 0.5) + 1)
            tf = doc[term]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        scores.append(score)
    return scores


# A line break inside a sentence (hard-wrapped text: licences, READMEs, e-mail): not after closing
# punctuation or a colon, and not before a blank line, a list item, a heading or a quote.
WRAPPED_LINE_BREAK = re.compile(r"(?<![.!?:。！？\n])[ \t]*\n[ \t]*(?!\n|[-*•#>]|\d+[.)]\s)")


def sentences(text: str) -> list[str]:
    """The sentences of `text`, hard-wrapped lines joined with a space (otherwise verbatim)."""
    return [s.strip() for s in SENTENCE_END.split(WRAPPED_LINE_BREAK.sub(" ", text)) if s.strip()]


def supporting_sentences(answer: str, question: str, context: str, *, limit: int = 2) -> list[str]:
    """The context sentences that share the most (rare) words with the answer, in context order."""
    units = sentences(context)
    if not units or not terms(answer):
        return []
    by_answer = bm25_scores(answer, units)
    by_question = bm25_scores(question, units)
    ranked = sorted((i for i in range(len(units)) if by_answer[i] > 0), key=lambda i: -(by_answer[i] + 0.5 * by_question[i]))
    return [units[i] for i in sorted(ranked[:limit])]


# --- Running the recipes ----------------------------------------------------------------------


@dataclass
class Step:
    """One request to the model; `final` steps make up the output, with `prefix`/`suffix` around them."""

    stage: Stage
    index: int  # within its stage (and reduce round)
    total: int
    final: bool
    messages: list[Message]
    prompt_ids: list[int]
    chunks: tuple[int, ...] = ()  # the input chunks it reads (reduce steps read earlier outputs)
    level: int = 0  # reduce round, from 1
    prefix: str = ""
    suffix: str = ""
    generation: Generation | None = None  # None in a dry run
    layout: Callable[[str], str] | None = None  # translate: whitespace made to match the source chunk

    @property
    def cut_back(self) -> bool:
        """Whether the answer stopped at -n and ends at its last whole sentence instead (not with a constraint)."""
        g = self.generation
        return g is not None and g.results[0].stop_reason == "length" and g.settings.constraint is None

    @property
    def text(self) -> str:
        text = self.generation.text.strip() if self.generation is not None else ""
        text = self.layout(text) if self.layout else text
        return whole_sentences(text) if self.cut_back else text


def whole_sentences(text: str) -> str:
    """`text` up to the end of its last whole sentence or line; all of it when none ends in it."""
    ends = [m.end() for m in WHOLE_SENTENCE_END.finditer(text) if m.end() > 0]
    return text[: ends[-1]].rstrip() if ends else text


def match_layout(source: str) -> Callable[[str], str]:
    """A function that removes line breaks (or blank lines) from a translation where `source` has none.

    Small models like to start new paragraphs; the translation of one paragraph stays one
    paragraph, so that the input's layout is the output's. Works on streamed pieces too, as long
    as each whitespace run arrives whole (cli_presets.Trim holds trailing whitespace back).
    """
    if "\n" not in source.strip():
        return lambda text: re.sub(r"[ \t]*\n\s*", " ", text)
    if not BLANK_LINE.search(source.strip()):
        return lambda text: re.sub(r"[ \t]*\n\s*\n[ \t]*", "\n", text)
    return lambda text: text


@dataclass
class Runner:
    """Shared state of one preset run: the model, settings, chunks, steps so far and the output."""

    llm: LLM
    settings: GenerationSettings  # max_tokens is set per step
    context: int
    template: str = "auto"
    dry_run: bool = False  # build the first round of steps without running anything (--show-prompt)
    chunks: list[Chunk] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # qa: BM25 score of each chunk
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for stderr: what was left out and why
    output: str = ""
    quotes: list[str] = field(default_factory=list)
    structured: bool = False  # --json: the answer as data too (summarize --bullets: {"points"}, qa: {"answer", "quotes"})
    bullets: bool = False  # summarize --bullets: the final summary held to '- ' lines (presets.BULLETS)
    data: Any = None  # that data (None when the answer was cut short)

    def count(self, text: str) -> int:
        return len(self.llm.tokenizer.encode(text, bos=False)) if text else 0

    def encode(self, recipe: Recipe, **fields: str) -> list[int]:
        return self.llm.encode_chat(recipe.messages(**fields), template=self.template)

    def overhead(self, recipe: Recipe, **fields: str) -> int:
        """Tokens of the rendered prompt around the text."""
        return len(self.encode(recipe, **{**fields, "text": ""}))

    def step(
        self, stage: Stage, index: int, total: int, recipe: Recipe, fields: dict[str, str], max_tokens: int, *, final: bool, constraint: Spec | None = None, **extra: object
    ) -> Step:
        from .generation import Generation

        messages = recipe.messages(**fields)
        ids = self.llm.encode_chat(messages, template=self.template)
        settings = dataclasses.replace(self.settings, max_tokens=max_tokens, constraint=constraint)
        generation = None if self.dry_run else Generation(self.llm.model, self.llm.tokenizer, ids, settings, context=self.context)
        step = Step(stage, index, total, final, messages, ids, generation=generation, **extra)  # type: ignore[arg-type]
        self.steps.append(step)
        return step

    def whole(self, document: str) -> int:
        """Make the whole document the only chunk; returns its token count."""
        tokens = self.count(document.strip())
        self.chunks = [Chunk(0, 0, len(document), document, tokens)]
        return tokens


def finish(step: Step) -> str:
    """Run whatever the caller did not consume of the step's generation; its stripped text."""
    if step.generation is not None and step.generation.results[0].stop_reason is None:
        for _ in step.generation:
            pass
    return step.text


def _check_input(document: str) -> None:
    if not document.strip():
        raise LlamaError("the input is empty: give a file or pipe some text")


def _too_small(runner: Runner, tokens: int, max_tokens: int) -> UsageError:
    return UsageError(f"the input ({tokens} tokens) must be split, but a {runner.context}-token context leaves too little room with -n {max_tokens}; raise --ctx or lower -n")


def summarize(runner: Runner, document: str, fields: dict[str, str], max_tokens: int) -> Iterator[Step]:
    """Summarize in one step if it fits, else map chunks to partial summaries and reduce them in rounds."""
    _check_input(document)
    n, context = max_tokens, runner.context
    tokens = runner.whole(document)
    spec = points_spec() if runner.bullets else None  # the final summary only
    if tokens + runner.overhead(SUMMARIZE, **fields) + n <= context:
        step = runner.step("summarize", 0, 1, SUMMARIZE, {**fields, "text": document.strip()}, n, final=True, chunks=(0,), constraint=spec)
        yield step
        _summary_output(runner, step)
        return
    map_budget = context - runner.overhead(SUMMARIZE_PART, focus=fields["focus"]) - n - MARGIN
    reduce_budget = context - runner.overhead(COMBINE, **fields) - n - MARGIN
    if map_budget < MIN_CHUNK or reduce_budget < 2 * (n + MARGIN):  # reduce rounds must at least halve the count
        raise _too_small(runner, tokens, n)
    runner.chunks = split_text(document, map_budget, runner.count)
    partials: list[str] = []
    for chunk in runner.chunks:
        step = runner.step("map", chunk.index, len(runner.chunks), SUMMARIZE_PART, {"focus": fields["focus"], "text": chunk.text.strip()}, n, final=False, chunks=(chunk.index,))
        yield step
        partials.append(finish(step))
    if runner.dry_run:
        return
    level = 1
    while True:
        joined = "\n\n".join(p for p in partials)
        if len(partials) == 1 or runner.count(joined) <= reduce_budget:
            step = runner.step("reduce", 0, 1, COMBINE, {**fields, "text": joined}, n, final=True, level=level, constraint=spec)
            yield step
            _summary_output(runner, step)
            return
        groups = pack([runner.count(p) + MARGIN for p in partials], reduce_budget)
        merged: list[str] = []
        for i, group in enumerate(groups):
            text = "\n\n".join(partials[j] for j in group)
            step = runner.step("reduce", i, len(groups), COMBINE, {**fields, "text": text}, n, final=False, level=level)
            yield step
            merged.append(finish(step))
        partials, level = merged, level + 1


def _summary_output(runner: Runner, step: Step) -> None:
    runner.output = finish(step)
    result = step.generation.results[0] if step.generation is not None else None
    if not runner.structured or result is None or not result.complete:
        return
    data = points(runner.output)
    if result.stop_reason == "length":  # the last point is probably cut mid-sentence: keep the whole ones
        data["points"] = data["points"][:-1]
        runner.notes.append(f"the last point was cut at -n {step.generation.settings.max_tokens} tokens and is left out of the data (raise -n)")  # type: ignore[union-attr]
    runner.data = data if data["points"] else None


def translate(runner: Runner, document: str, fields: dict[str, str], max_tokens: int | None) -> Iterator[Step]:
    """Translate paragraph by paragraph (long ones chunk by chunk), in order, keeping the input's whitespace.

    `max_tokens` None sizes each step's answer to its chunk: twice its tokens plus 16.
    """
    _check_input(document)
    overhead = runner.overhead(TRANSLATE, **fields)
    room = runner.context - overhead - MARGIN
    budget = room - max_tokens if max_tokens else (room - 16) // 3
    if budget < MIN_CHUNK:
        raise _too_small(runner, runner.count(document.strip()), max_tokens or 0)
    runner.chunks = split_text(document, budget, runner.count, merge_paragraphs=False)
    out = []
    for chunk in runner.chunks:
        body = chunk.text.strip()
        lead = chunk.text[: len(chunk.text) - len(chunk.text.lstrip())]
        trail = chunk.text[len(chunk.text.rstrip()) :]
        n = max_tokens or min(2 * chunk.tokens + 16, runner.context - overhead - chunk.tokens - 1)
        step = runner.step("translate", chunk.index, len(runner.chunks), TRANSLATE, {**fields, "text": body}, n, final=True, chunks=(chunk.index,), prefix=lead, suffix=trail, layout=match_layout(body))
        yield step
        out.append(lead + finish(step) + trail)
    runner.output = "".join(out)


def answer(runner: Runner, document: str, question: str, max_tokens: int, *, quote: bool = False) -> Iterator[Step]:
    """Answer from the whole context if it fits, else from the chunks that best match the question (BM25)."""
    _check_input(document)
    if not question.strip():
        raise UsageError("the question is empty")
    n, fields = max_tokens, {"question": question.strip()}
    tokens = runner.whole(document)
    asked = set(terms(question))
    if asked and not asked & set(terms(document)) and not runner.dry_run:
        # Small models answer anyway from what they know; when not one word of the question is
        # in the context, the context cannot hold the answer, so say so without asking the model.
        runner.notes.append(f"none of the question's words ({', '.join(sorted(asked))}) occur in the context")
        runner.output = CANNOT_TELL
        runner.data = {"answer": CANNOT_TELL, "quotes": []} if runner.structured else None
        return
    budget = runner.context - runner.overhead(QA, **fields) - n - MARGIN
    used = [0]
    if tokens > budget:
        if budget < MIN_CHUNK:
            raise _too_small(runner, tokens, n)
        runner.chunks = split_text(document, max(MIN_CHUNK, min(budget, budget // 4)), runner.count)
        runner.scores = bm25_scores(question, [c.text for c in runner.chunks])
        used, total = [], 0
        for i in sorted(range(len(runner.chunks)), key=lambda i: -runner.scores[i]):
            if total + runner.chunks[i].tokens + 2 <= budget:
                used.append(i)
                total += runner.chunks[i].tokens + 2
        used.sort()
        runner.notes.append(f"the context ({tokens} tokens) does not fit a {runner.context}-token window with -n {n}; answering from the {len(used)} of {len(runner.chunks)} chunks that best match the question")
    context_text = "\n\n".join(runner.chunks[i].text.strip() for i in used)
    step = runner.step("answer", 0, 1, QA, {**fields, "text": context_text}, n, final=True, chunks=tuple(used))
    yield step
    runner.output = finish(step)
    if (quote or runner.structured) and not runner.output.startswith(CANNOT_TELL.rstrip(".")):
        runner.quotes = supporting_sentences(runner.output, question, context_text)
    if runner.structured:  # the quotes are context sentences, verbatim (chosen by BM25 against the answer)
        runner.data = {"answer": runner.output, "quotes": runner.quotes}
