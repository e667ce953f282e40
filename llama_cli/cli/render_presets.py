"""What the presets print: the final answer streamed to stdout, progress and notes on stderr, JSON lines, stats.

A preset runs as steps (presets/run.py): partial summaries, paragraphs, the answer. Only final
steps reach stdout; the others show as progress (a bar on a terminal, else one line per step).
A long prefill shows as progress.py's wait where the preset's own bar is not on screen.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import typer

from ..progress import Reporter
from ..textio import write_out

if TYPE_CHECKING:
    from ..presets.run import Runner, Step


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
        what = (
            f"combining summaries, round {step.level}: {step.index + 1} of {step.total}"
            if step.stage == "reduce"
            else f"chunk {step.index + 1} of {step.total}"
        )
        if not self.terminal:
            print(f"llama: {self.preset}: {what}", file=sys.stderr, flush=True)
            return
        if step.final and sys.stdout.isatty():  # streamed text shows the progress itself
            self.close()
            return
        import rich.progress
        from rich.console import Console

        if self.bar is None:
            self.bar = rich.progress.Progress(
                *rich.progress.Progress.get_default_columns()[:-1], console=Console(stderr=True), transient=True, redirect_stdout=False
            )
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
            print(
                "llama: note: the summaries of these chunks are then combined (presets.COMBINE); those prompts depend on the answers",
                file=sys.stderr,
            )
        return
    progress, notes_seen, last = Progress(preset), 0, "\n"
    waits = Reporter()
    interrupted = False
    try:
        for number, step in enumerate(steps):
            notes_seen = _print_notes(preset, runner, notes_seen)
            progress.show(step, runner)
            if step.generation is not None and progress.bar is None:  # a preset's bar shows its steps' waits itself
                step.generation.progress = waits
            last = _run_step(step, number, as_json=as_json) or last
            if as_json:
                write_out(json.dumps(step_record(step, number), ensure_ascii=False) + "\n")
            reason = step.generation.results[0].stop_reason if step.generation else None
            if reason == "length":
                what = "its text ends at its last whole sentence" if step.cut_back else "its text may be cut short"
                print(
                    f"llama: warning: {preset}: {step.stage} step {step.index + 1} of {step.total} stopped at -n "
                    f"{step.generation.settings.max_tokens} tokens; {what} (raise -n for more)",
                    file=sys.stderr,
                    flush=True,
                )  # type: ignore[union-attr]
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
        print(f'llama: error: {preset}: the answer was cut short at -n tokens, so it has no "data"; raise -n', file=sys.stderr, flush=True)
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
        from .render import token_json

        for event in generation:
            record = json.loads(token_json(event, generation.tokenizer))
            write_out(json.dumps({**record, "step": number}, ensure_ascii=False) + "\n")
        return ""
    from ..presets.split import WHOLE_SENTENCE_END, whole_sentences

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
        "event": "step",
        "step": number,
        "stage": step.stage,
        "index": step.index,
        "of": step.total,
        "chunks": list(step.chunks),
        "final": step.final,
        "text": step.text,
        "prompt_tokens": generation.stats.prompt_tokens,
        "generated_tokens": generation.stats.generated_tokens,
        "stop_reason": generation.results[0].stop_reason,
    }
    if step.stage == "reduce":
        record["level"] = step.level
    return record


def _totals(runner: Runner) -> dict[str, float]:
    gens = [s.generation.stats for s in runner.steps if s.generation is not None]
    prefilled = sum(g.prefilled_tokens for g in gens)
    prefill_s = sum(g.prefill_seconds for g in gens)
    decoded = sum(max(g.generated_tokens - 1, 0) for g in gens)  # each step's first token comes from its prefill
    decode_s = sum(g.decode_seconds for g in gens)
    return {
        "prompt_tokens": sum(g.prompt_tokens for g in gens),
        "prefilled_tokens": prefilled,
        "generated_tokens": sum(g.generated_tokens for g in gens),
        "prefill_seconds": round(prefill_s, 4),
        "decode_seconds": round(decode_s, 4),
        "prefill_tokens_per_s": round(prefilled / prefill_s, 2) if prefill_s else 0.0,
        "decode_tokens_per_s": round(decoded / decode_s, 2) if decode_s else 0.0,
        "drafted_tokens": sum(g.drafted_tokens for g in gens),
        "accepted_tokens": sum(g.accepted_tokens for g in gens),
    }


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
        "event": "done",
        "preset": preset,
        "text": runner.output,
        "stop_reason": "length" if "length" in reasons else (reasons[-1] if reasons else None),
        **_totals(runner),
        "steps": len(runner.steps),
        "chunks": chunks,
        "seed": runner.steps[0].generation.seed if runner.steps and runner.steps[0].generation else None,
    }
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
        f"generated: {t['generated_tokens']} tokens ({t['decode_tokens_per_s']:.1f} tok/s){lookup} | stop: "
        f"{', '.join(reasons) or '- (the model was not run)'}"
    )
