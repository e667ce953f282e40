"""Running the recipes over inputs of any length: each preset is a generator of `Step`s.

Input that fits the context window (with room for the answer) is sent whole. Longer input is
split (split.py), then:

- summarize maps each chunk to a partial summary and reduces the partial summaries, in order,
  to one summary (in several rounds when they do not fit together);
- translate goes paragraph by paragraph (long paragraphs chunk by chunk) and joins the
  translations with the input's own whitespace, so the layout is kept whatever the model does;
- qa ranks the chunks by BM25 (rank.py) against the question and answers from the best ones
  that fit, saying on stderr how many were left out.

The caller runs (or streams) `step.generation` between steps, and the generator reads its text
when it resumes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..chat_template import Message
from ..errors import LlamaError, UsageError
from ..settings import SettingsError
from .rank import bm25_scores, supporting_sentences, terms
from .recipes import CANNOT_TELL, COMBINE, QA, SUMMARIZE, SUMMARIZE_PART, TRANSLATE, Recipe, points, points_spec
from .split import BLANK_LINE, MARGIN, MAX_CHUNKS, MIN_CHUNK, Chunk, pack, split_text, whole_sentences

if TYPE_CHECKING:
    from ..api import LLM
    from ..generation import Generation, GenerationSettings
    from ..schema import Spec

Stage = Literal["summarize", "map", "reduce", "translate", "answer"]


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


def match_layout(source: str) -> Callable[[str], str]:
    """A function that removes line breaks (or blank lines) from a translation where `source` has none.

    Small models like to start new paragraphs; the translation of one paragraph stays one
    paragraph, so that the input's layout is the output's. Works on streamed pieces too, as long
    as each whitespace run arrives whole (cli/render_presets.Trim holds trailing whitespace back).
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
    max_chunks: int = MAX_CHUNKS  # summarize/translate refuse an input that splits into more

    def plan(self, what: str, steps: int, n: int) -> None:
        """Refuse work beyond `max_chunks` with the number it would take, else say how much there is."""
        if len(self.chunks) > self.max_chunks:
            raise SettingsError(
                f"the input splits into {len(self.chunks):,} chunks, more than {{max_chunks}} {self.max_chunks}: "
                f"{steps:,} steps of up to {n:,} tokens each; raise {{max_chunks}} to {len(self.chunks):,} to run them, or give less text"
            )
        if len(self.chunks) > 1:
            self.notes.append(f"{len(self.chunks):,} chunks: {what} ({steps:,} steps in all, each up to {n:,} tokens)")

    def count(self, text: str) -> int:
        from ..tokenizer import count_tokens  # bounded memory for a long input

        return count_tokens(self.llm.tokenizer, text, bos=False) if text else 0

    def refuse_past_max_chunks(self, tokens: int, budget: int) -> None:
        """Refuse at once an input whose token count alone makes more than `max_chunks` chunks of
        `budget` tokens: cutting it up to count its chunks exactly costs several more encodes of it
        (33 s of CPU and 1.6 GB for 8 MB) before `plan` could refuse it."""
        least = -(-tokens // budget)
        if least > self.max_chunks:
            raise SettingsError(
                f"the input splits into at least {least:,} chunks ({tokens:,} tokens, up to {budget:,} a chunk), more than "
                f"{{max_chunks}} {self.max_chunks}; raise {{max_chunks}} to {least:,} or more to run them, or give less text"
            )

    def encode(self, recipe: Recipe, **fields: str) -> list[int]:
        return self.llm.encode_chat(recipe.messages(**fields), template=self.template)

    def overhead(self, recipe: Recipe, **fields: str) -> int:
        """Tokens of the rendered prompt around the text."""
        return len(self.encode(recipe, **{**fields, "text": ""}))

    def step(
        self,
        stage: Stage,
        index: int,
        total: int,
        recipe: Recipe,
        fields: dict[str, str],
        max_tokens: int,
        *,
        final: bool,
        constraint: Spec | None = None,
        **extra: object,
    ) -> Step:
        from ..generation import Generation

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
    return UsageError.naming(
        f"the input ({tokens} tokens) must be split, but a {runner.context}-token context leaves too little room with "
        f"{{max_tokens}} {max_tokens}; raise {{context}} or lower {{max_tokens}}"
    )


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
    runner.refuse_past_max_chunks(tokens, map_budget)
    runner.chunks = split_text(document, map_budget, runner.count)
    combining = _combining_steps(len(runner.chunks), n + MARGIN, reduce_budget)
    then = f"about {combining:,} steps that combine them" if combining > 1 else "one step that combines them"
    runner.plan(f"a summary of each, then {then}", len(runner.chunks) + combining, n)
    partials: list[str] = []
    for chunk in runner.chunks:
        step = runner.step(
            "map",
            chunk.index,
            len(runner.chunks),
            SUMMARIZE_PART,
            {"focus": fields["focus"], "text": chunk.text.strip()},
            n,
            final=False,
            chunks=(chunk.index,),
        )
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


def _combining_steps(partials: int, each: int, budget: int) -> int:
    """How many reduce steps summarize will take for `partials` summaries of up to `each` tokens
    (an estimate: a summary is often shorter than -n, and then fewer are needed)."""
    steps = 0
    while partials > 1 and partials * each > budget:
        partials = -(-partials * each // budget)  # groups of this round, each one step
        steps += partials
    return steps + 1


def _summary_output(runner: Runner, step: Step) -> None:
    runner.output = finish(step)
    result = step.generation.results[0] if step.generation is not None else None
    if not runner.structured or result is None or not result.complete:
        return
    data = points(runner.output)
    if result.stop_reason == "length":  # the last point is probably cut mid-sentence: keep the whole ones
        data["points"] = data["points"][:-1]
        runner.notes.append(
            f"the last point was cut at -n {step.generation.settings.max_tokens} tokens and is left out of the data (raise -n)"
        )  # type: ignore[union-attr]
    runner.data = data if data["points"] else None


def translate(runner: Runner, document: str, fields: dict[str, str], max_tokens: int | None) -> Iterator[Step]:
    """Translate paragraph by paragraph (long ones chunk by chunk), in order, keeping the input's whitespace.

    `max_tokens` None sizes each step's answer to its chunk: twice its tokens plus 16.
    """
    _check_input(document)
    overhead = runner.overhead(TRANSLATE, **fields)
    room = runner.context - overhead - MARGIN
    budget = room - max_tokens if max_tokens else (room - 16) // 3
    tokens = runner.count(document.strip())
    if budget < MIN_CHUNK:
        raise _too_small(runner, tokens, max_tokens or 0)
    runner.refuse_past_max_chunks(tokens, budget)
    runner.chunks = split_text(document, budget, runner.count, merge_paragraphs=False)
    runner.plan("each translated in turn", len(runner.chunks), max_tokens or 2 * budget + 16)
    out = []
    for chunk in runner.chunks:
        body = chunk.text.strip()
        lead = chunk.text[: len(chunk.text) - len(chunk.text.lstrip())]
        trail = chunk.text[len(chunk.text.rstrip()) :]
        n = max_tokens or min(2 * chunk.tokens + 16, runner.context - overhead - chunk.tokens - 1)
        step = runner.step(
            "translate",
            chunk.index,
            len(runner.chunks),
            TRANSLATE,
            {**fields, "text": body},
            n,
            final=True,
            chunks=(chunk.index,),
            prefix=lead,
            suffix=trail,
            layout=match_layout(body),
        )
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
        runner.notes.append(
            f"the context ({tokens} tokens) does not fit a {runner.context}-token window with -n {n}; answering from the "
            f"{len(used)} of {len(runner.chunks)} chunks that best match the question"
        )
    context_text = "\n\n".join(runner.chunks[i].text.strip() for i in used)
    step = runner.step("answer", 0, 1, QA, {**fields, "text": context_text}, n, final=True, chunks=tuple(used))
    yield step
    runner.output = finish(step)
    if (quote or runner.structured) and not runner.output.startswith(CANNOT_TELL.rstrip(".")):
        runner.quotes = supporting_sentences(runner.output, question, context_text)
    if runner.structured:  # the quotes are context sentences, verbatim (chosen by BM25 against the answer)
        runner.data = {"answer": runner.output, "quotes": runner.quotes}
