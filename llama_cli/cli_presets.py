"""`llama summarize`, `llama translate` and `llama qa`: the recipes of presets.py, run through chunking.py.

Built for pipes: input from files or stdin, the answer alone on stdout (ending in a newline),
progress, notes and stats on stderr. Greedy unless -t is given; prompt-lookup decoding is on by
default (same output, faster where the answer copies the input). Registered on cli.py's `app`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli import _load, app
from .cli_common import (
    CtxOpt,
    DeviceOpt,
    DtypeOpt,
    FrequencyPenaltyOpt,
    JsonOpt,
    ModelOpt,
    NoCacheOpt,
    PresencePenaltyOpt,
    RepeatPenaltyOpt,
    SeedOpt,
    StatsOpt,
    ThreadsOpt,
    handles_errors,
    read_documents,
    write_out,
)
from .errors import UsageError

if TYPE_CHECKING:
    from .chunking import Runner, Step
    from .presets import Recipe

PRESET_PANEL = "Preset"
MaxTokensOpt = Annotated[int | None, typer.Option("--max-tokens", "-n", help="Most tokens per answer (and per partial summary). Default: the preset's.", rich_help_panel="Sampling", show_default=False)]
LookupOpt = Annotated[int | None, typer.Option("--lookup", help="Prompt-lookup decoding: at most N tokens drafted from the input per step (0 = off). Default: 8 with --dtype float32, where the text stays the same; off on the int4 fast path, where rounding can change it.", rich_help_panel="Sampling", show_default=False)]
TemplateOpt = Annotated[str, typer.Option("--template", help="Chat template: auto (the model's own), chatml, llama3 or llama2.", rich_help_panel="Prompt")]
PresetTemperatureOpt = Annotated[float | None, typer.Option("--temperature", "-t", help="0 = greedy (the presets' default).", rich_help_panel="Sampling", show_default=False)]
NoRepeatNgramOpt = Annotated[int | None, typer.Option("--no-repeat-ngram", help="Never repeat a run of N generated tokens, which ends the loops a small model falls into (0 = off). Default: the preset's.", rich_help_panel="Sampling", show_default=False)]
ShowPromptOpt = Annotated[bool, typer.Option("--show-prompt", help="Print the rendered prompt(s) instead of running the model.", rich_help_panel="Prompt")]
FilesArg = Annotated[list[str] | None, typer.Argument(help="Text files, read in order; none or '-' reads stdin.", metavar="FILE", show_default=False)]


class Trim:
    """Streams text without its leading and trailing whitespace (trailing whitespace is held back).

    `layout`, if given, rewrites each released piece; every whitespace run reaches it whole.
    """

    def __init__(self, layout: Callable[[str], str] | None = None) -> None:
        self.started, self.held, self.layout = False, "", layout

    def feed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        out, self.held = self.held + body, text[len(body) :]
        return self.layout(out) if self.layout else out


class Progress:
    """Which step is running, on stderr: a rich bar on a terminal, else one line per step."""

    def __init__(self, preset: str) -> None:
        self.preset, self.bar, self.task = preset, None, None
        self.terminal = sys.stderr.isatty()

    def show(self, step: Step, runner: Runner) -> None:
        if len(runner.chunks) <= 1 and step.stage != "reduce":
            return
        what = f"combining summaries, round {step.level}: {step.index + 1} of {step.total}" if step.stage == "reduce" else f"chunk {step.index + 1} of {step.total}"
        if not self.terminal:
            print(f"llama: {self.preset}: {what}", file=sys.stderr, flush=True)
            return
        if step.final and sys.stdout.isatty():  # streamed text shows the progress itself
            self.close()
            return
        import rich.progress
        from rich.console import Console

        if self.bar is None:
            self.bar = rich.progress.Progress(*rich.progress.Progress.get_default_columns()[:-1], console=Console(stderr=True), transient=True, redirect_stdout=False)
            self.bar.start()
        if self.task is None or step.index == 0:
            self.task = self.bar.add_task(what, total=step.total)
        self.bar.update(self.task, description=f"{self.preset}: {what}", completed=step.index)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def run_preset(preset: str, runner: Runner, steps: Iterator[Step], *, as_json: bool, stats: bool, show_prompt: bool) -> None:
    """Drive the steps: stream final text to stdout, progress and notes to stderr, then JSON/stats."""
    if show_prompt:
        shown = list(steps)
        for i, step in enumerate(shown):
            header = f"--- prompt {i + 1} of {len(shown)} ({step.stage}) ---\n" if len(shown) > 1 else ""
            write_out(header + runner.llm.chat_prompt(step.messages, template=runner.template) + ("\n" if len(shown) > 1 else ""))
        if any(s.stage == "map" for s in shown):
            print("llama: note: the summaries of these chunks are then combined (presets.COMBINE); those prompts depend on the answers", file=sys.stderr)
        return
    progress, notes_seen, last = Progress(preset), 0, "\n"
    interrupted = False
    try:
        for number, step in enumerate(steps):
            notes_seen = _print_notes(preset, runner, notes_seen)
            progress.show(step, runner)
            last = _run_step(step, number, as_json=as_json) or last
            if as_json:
                write_out(json.dumps(step_record(step, number), ensure_ascii=False) + "\n")
            reason = step.generation.results[0].stop_reason if step.generation else None
            if reason == "length":
                what = "its text ends at its last whole sentence" if step.cut_back else "its text may be cut short"
                print(f"llama: warning: {preset}: {step.stage} step {step.index + 1} of {step.total} stopped at -n {step.generation.settings.max_tokens} tokens; {what} (raise -n for more)", file=sys.stderr, flush=True)  # type: ignore[union-attr]
    except KeyboardInterrupt:
        interrupted = True
        for step in runner.steps:
            if step.generation is not None:
                step.generation.mark_interrupted()
    finally:
        progress.close()
    _print_notes(preset, runner, notes_seen)  # notes from after the last step (or from a run with none)
    if not as_json and runner.output and not any(s.final for s in runner.steps):  # answered without the model (qa)
        write_out(runner.output)
        last = runner.output[-1]
    if not as_json:
        if runner.quotes:
            write_out("" if last == "\n" else "\n")
            write_out("".join(f"> {q}\n" for q in runner.quotes))
        elif last != "\n":
            write_out("\n")
    else:
        write_out(json.dumps(done_record(preset, runner), ensure_ascii=False) + "\n")
    if stats:
        print(stats_line(preset, runner), file=sys.stderr, flush=True)
    if interrupted:
        print("llama: interrupted", file=sys.stderr, flush=True)
        raise typer.Exit(130)
    if runner.structured and runner.data is None and not show_prompt:
        print(f"llama: error: {preset}: the answer was cut short at -n tokens, so it has no \"data\"; raise -n", file=sys.stderr, flush=True)
        raise typer.Exit(1)


def _print_notes(preset: str, runner: Runner, seen: int) -> int:
    """Print the runner's notes from number `seen` on to stderr; returns how many there are now."""
    for note in runner.notes[seen:]:
        print(f"llama: {preset}: {note}", file=sys.stderr, flush=True)
    return len(runner.notes)


def _run_step(step: Step, number: int, *, as_json: bool) -> str:
    """Run one step; final steps stream to stdout. Returns the last character written ('' if none)."""
    generation = step.generation
    assert generation is not None
    if not step.final:
        for _ in generation:
            pass
        return ""
    if as_json:
        from .output import token_json

        for event in generation:
            record = json.loads(token_json(event, generation.tokenizer))
            write_out(json.dumps({**record, "step": number}, ensure_ascii=False) + "\n")
        return ""
    from .chunking import WHOLE_SENTENCE_END, whole_sentences

    # Released a whole sentence (or line) at a time, so that an answer cut at -n can end at its last
    # whole sentence (Step.text, what --json and the next steps see, ends there too).
    trim, written, held = Trim(step.layout), "", ""
    write_out(step.prefix)
    try:
        for event in generation:
            held += trim.feed(event.text)
            ends = [m.end() for m in WHOLE_SENTENCE_END.finditer(held) if 0 < m.end() < len(held)]
            if ends:
                write_out(held[: ends[-1]])
                written, held = written + held[: ends[-1]], held[ends[-1] :]
    except KeyboardInterrupt:
        write_out(held)
        raise
    if step.cut_back:
        whole = whole_sentences(written + held)
        held = whole[len(written) :] if whole.startswith(written) else ""
    write_out(held)
    written += held
    write_out(step.suffix)
    tail = step.suffix or written[-1:] or step.prefix
    return tail[-1:]


def step_record(step: Step, number: int) -> dict[str, Any]:
    generation = step.generation
    assert generation is not None
    record: dict[str, Any] = {
        "event": "step", "step": number, "stage": step.stage, "index": step.index, "of": step.total,
        "chunks": list(step.chunks), "final": step.final, "text": step.text,
        "prompt_tokens": generation.prompt_tokens, "generated_tokens": generation.generated_tokens,
        "stop_reason": generation.results[0].stop_reason,
    }  # fmt: skip
    if step.stage == "reduce":
        record["level"] = step.level
    return record


def _totals(runner: Runner) -> dict[str, float]:
    gens = [s.generation for s in runner.steps if s.generation is not None]
    prefilled = sum(g.prefilled_tokens for g in gens)
    prefill_s = sum(g.prefill_seconds for g in gens)
    decoded = sum(max(g.generated_tokens - 1, 0) for g in gens)  # each step's first token comes from its prefill
    decode_s = sum(g.decode_seconds for g in gens)
    return {
        "prompt_tokens": sum(g.prompt_tokens for g in gens), "prefilled_tokens": prefilled,
        "generated_tokens": sum(g.generated_tokens for g in gens),
        "prefill_seconds": round(prefill_s, 4), "decode_seconds": round(decode_s, 4),
        "prefill_tokens_per_s": round(prefilled / prefill_s, 2) if prefill_s else 0.0,
        "decode_tokens_per_s": round(decoded / decode_s, 2) if decode_s else 0.0,
        "drafted_tokens": sum(g.drafted_tokens for g in gens), "accepted_tokens": sum(g.accepted_tokens for g in gens),
    }  # fmt: skip


def done_record(preset: str, runner: Runner) -> dict[str, Any]:
    finals = [s for s in runner.steps if s.final and s.generation is not None]
    reasons = [s.generation.results[0].stop_reason for s in finals]  # type: ignore[union-attr]
    chunks = []
    for chunk in runner.chunks:
        entry: dict[str, Any] = {"index": chunk.index, "start": chunk.start, "end": chunk.end, "tokens": chunk.tokens}
        if runner.scores:
            entry["score"] = round(runner.scores[chunk.index], 4)
        entry["steps"] = [i for i, s in enumerate(runner.steps) if chunk.index in s.chunks]
        chunks.append(entry)
    record: dict[str, Any] = {
        "event": "done", "preset": preset, "text": runner.output,
        "stop_reason": "length" if "length" in reasons else (reasons[-1] if reasons else None),
        **_totals(runner), "steps": len(runner.steps), "chunks": chunks,
        "seed": runner.steps[0].generation.seed if runner.steps and runner.steps[0].generation else None,
    }  # fmt: skip
    if runner.structured:
        record["data"] = runner.data
    if runner.quotes:
        record["quotes"] = runner.quotes
    if runner.notes:
        record["notes"] = runner.notes
    return record


def stats_line(preset: str, runner: Runner) -> str:
    t = _totals(runner)
    reasons = sorted({str(s.generation.results[0].stop_reason) for s in runner.steps if s.final and s.generation is not None})
    lookup = f" | lookup: {t['accepted_tokens']} of {t['drafted_tokens']} drafted tokens accepted" if t["drafted_tokens"] else ""
    return (
        f"{preset}: {len(runner.chunks)} chunk(s), {len(runner.steps)} step(s) | "
        f"prompt: {t['prompt_tokens']} tokens ({t['prefill_tokens_per_s']:.1f} tok/s) | "
        f"generated: {t['generated_tokens']} tokens ({t['decode_tokens_per_s']:.1f} tok/s){lookup} | stop: {', '.join(reasons) or '- (the model was not run)'}"
    )


def make_runner(recipe: Recipe, lookup: int | None, *, model: str | None, temperature: float | None, seed: int | None, ctx: int | None, dtype: str, device: str, threads: int | None, no_cache: bool, template: str, show_prompt: bool, penalties: dict[str, Any] | None = None) -> Runner:
    """Validate the options (before loading anything), load the model and set up a Runner for `recipe`'s defaults.

    `penalties`: repetition_penalty, frequency_penalty, presence_penalty and no_repeat_ngram (None: the recipe's)."""
    from .api import make_settings
    from .chunking import Runner

    options = dict(penalties or {})
    if options.get("no_repeat_ngram") is None:
        options["no_repeat_ngram"] = recipe.no_repeat_ngram
    settings = make_settings(temperature=recipe.temperature if temperature is None else temperature, seed=seed, lookup=lookup or 0, **options)
    if ctx is not None and ctx < 1:
        raise UsageError(f"--ctx must be >= 1, got {ctx}")
    llm = _load(model, dtype, device, threads, no_cache)
    from .chat_template import check_builtin_template

    check_builtin_template(llm.tokenizer, template)
    if lookup is None and not llm.fast:
        # Lookup's verify pass gives the same text only where its arithmetic matches a decode step's:
        # on the float32 reference, not (yet) on the int4 fast path, so the default follows the path.
        settings = dataclasses.replace(settings, lookup=recipe.lookup)
    return Runner(llm, settings, context=min(ctx or llm.context_length, llm.context_length), template=template, dry_run=show_prompt)


def _penalties(repeat: float, frequency: float, presence: float, no_repeat_ngram: int | None) -> dict[str, Any]:
    return {"repetition_penalty": repeat, "frequency_penalty": frequency, "presence_penalty": presence, "no_repeat_ngram": no_repeat_ngram}


def _positive(value: int | None, name: str) -> int | None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")
    return value


@app.command()
@handles_errors
def summarize(
    files: FilesArg = None,
    length: Annotated[str, typer.Option("--length", "-l", help="short (1-2 sentences), medium (a paragraph) or long.", rich_help_panel=PRESET_PANEL)] = "medium",
    words: Annotated[int | None, typer.Option("--words", help="At most about N words (instead of --length).", rich_help_panel=PRESET_PANEL, show_default=False)] = None,
    bullets: Annotated[bool, typer.Option("--bullets", help="A bulleted list, one line per point.", rich_help_panel=PRESET_PANEL)] = False,
    focus: Annotated[str | None, typer.Option("--focus", help="What the summary should concentrate on.", rich_help_panel=PRESET_PANEL, show_default=False)] = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: PresetTemperatureOpt = None,
    seed: SeedOpt = None,
    lookup: LookupOpt = None,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    frequency_penalty: FrequencyPenaltyOpt = 0.0,
    presence_penalty: PresencePenaltyOpt = 0.0,
    no_repeat_ngram: NoRepeatNgramOpt = None,
    template: TemplateOpt = "auto",
    show_prompt: ShowPromptOpt = False,
    json_output: JsonOpt = False,
    stats: StatsOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Summarize text from files or stdin; long input is summarized in chunks, then combined.

    [b]Examples[/b]

      cat report.txt | llama summarize > summary.txt

      llama summarize --length short --bullets notes.md

      llama summarize --focus "costs and deadlines" --stats minutes-*.txt

      llama summarize --bullets --json notes.md | tail -1 | jq -r '.data.points[]'
    """
    from . import chunking, presets

    fields = presets.summary_fields(length=length, words=_positive(words, "--words"), bullets=bullets, focus=focus)
    n = _positive(max_tokens, "--max-tokens") or presets.summary_tokens(length=length, words=words)
    document = read_documents(files)
    runner = make_runner(presets.SUMMARIZE, lookup, model=model, temperature=temperature, seed=seed, ctx=ctx, dtype=dtype, device=device, threads=threads, no_cache=no_cache, template=template, show_prompt=show_prompt, penalties=_penalties(repeat_penalty, frequency_penalty, presence_penalty, no_repeat_ngram))
    runner.bullets = bullets  # '- ' lines, held by a constraint: a small model often answers "a list" with prose
    runner.structured = bullets and json_output  # the done event's "data": {"points": [...]}, each a string
    run_preset("summarize", runner, chunking.summarize(runner, document, fields, n), as_json=json_output, stats=stats, show_prompt=show_prompt)


@app.command()
@handles_errors
def translate(
    to: Annotated[str, typer.Option("--to", help="The language to translate into.", rich_help_panel=PRESET_PANEL, show_default=False)],
    files: FilesArg = None,
    source: Annotated[str | None, typer.Option("--from", help="The language of the input (default: the model guesses).", rich_help_panel=PRESET_PANEL, show_default=False)] = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: PresetTemperatureOpt = None,
    seed: SeedOpt = None,
    lookup: LookupOpt = None,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    frequency_penalty: FrequencyPenaltyOpt = 0.0,
    presence_penalty: PresencePenaltyOpt = 0.0,
    no_repeat_ngram: NoRepeatNgramOpt = None,
    template: TemplateOpt = "auto",
    show_prompt: ShowPromptOpt = False,
    json_output: JsonOpt = False,
    stats: StatsOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Translate text from files or stdin, paragraph by paragraph, keeping blank lines and line breaks in place.

    The output is the translation only. -n caps each paragraph's translation (default: twice its length).

    [b]Examples[/b]

      echo "Where is the train station?" | llama translate --to French

      llama translate --from German --to English brief.txt > brief.en.txt
    """
    from . import chunking, presets

    fields = presets.translate_fields(target=to, source=source)
    n = _positive(max_tokens, "--max-tokens")
    document = read_documents(files)
    runner = make_runner(presets.TRANSLATE, lookup, model=model, temperature=temperature, seed=seed, ctx=ctx, dtype=dtype, device=device, threads=threads, no_cache=no_cache, template=template, show_prompt=show_prompt, penalties=_penalties(repeat_penalty, frequency_penalty, presence_penalty, no_repeat_ngram))
    run_preset("translate", runner, chunking.translate(runner, document, fields, n), as_json=json_output, stats=stats, show_prompt=show_prompt)


@app.command()
@handles_errors
def qa(
    question: Annotated[str, typer.Argument(help="The question to answer from the context.", metavar="QUESTION")],
    context_files: Annotated[list[str] | None, typer.Option("--context", "-c", help="A context file (repeatable; '-' is stdin). Default: stdin.", rich_help_panel=PRESET_PANEL, show_default=False)] = None,
    quote: Annotated[bool, typer.Option("--quote", help="After the answer, print the context sentences it rests on ('> ' lines).", rich_help_panel=PRESET_PANEL)] = False,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: PresetTemperatureOpt = None,
    seed: SeedOpt = None,
    lookup: LookupOpt = None,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    frequency_penalty: FrequencyPenaltyOpt = 0.0,
    presence_penalty: PresencePenaltyOpt = 0.0,
    no_repeat_ngram: NoRepeatNgramOpt = None,
    template: TemplateOpt = "auto",
    show_prompt: ShowPromptOpt = False,
    json_output: JsonOpt = False,
    stats: StatsOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Answer a question from the given context only; says so when the context does not tell.

    Context that does not fit is ranked in chunks by relevance (BM25) and the best ones are used.

    [b]Examples[/b]

      llama qa "When was the tower completed?" --context eiffel.txt

      curl -s https://example.com/faq.txt | llama qa --quote "How do I reset my password?"

      llama qa --json "Who built it?" -c eiffel.txt | tail -1 | jq .data
    """
    from . import chunking, presets

    if not question.strip():
        raise UsageError("the question is empty")
    n = _positive(max_tokens, "--max-tokens") or presets.QA.max_tokens
    document = read_documents(context_files, option="--context FILE")
    runner = make_runner(presets.QA, lookup, model=model, temperature=temperature, seed=seed, ctx=ctx, dtype=dtype, device=device, threads=threads, no_cache=no_cache, template=template, show_prompt=show_prompt, penalties=_penalties(repeat_penalty, frequency_penalty, presence_penalty, no_repeat_ngram))
    runner.structured = json_output  # the done event's "data": {"answer": ..., "quotes": [context sentences, verbatim]}
    run_preset("qa", runner, chunking.answer(runner, document, question, n, quote=quote), as_json=json_output, stats=stats, show_prompt=show_prompt)
