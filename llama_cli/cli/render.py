"""What the commands print: a Generation as streamed text or JSON lines, stats on stderr, warnings as lines.

Shared by `generate`, the presets and anything else that prints a completion. Ctrl-C stops the
generation, keeps what was printed, still prints the stats or the final JSON event, and exits 130.
With a constraint (--schema, --regex, ...) the plain output is the value alone on its line, the
`done` event carries the parsed value as "data", and a value cut short (by -n) is an error (exit 1)
unless the caller allows it (--truncate-ok).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

from ..textio import write_out
from .errors import as_flags

if TYPE_CHECKING:
    from ..generation import Generation, SampleResult, TokenEvent
    from ..tokenizer import Tokenizer


def ensure_utf8_stdout() -> None:
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")


def print_warnings_as_lines() -> None:
    """Show library warnings (e.g. an unwritable cache, a prompt cut to fit) as `llama: warning: ...` lines on stderr."""
    import warnings

    def show(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None
    ) -> None:
        print(f"llama: warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = show


def token_json(event: TokenEvent, tokenizer: Tokenizer) -> str:
    record: dict[str, object] = {"event": "token", "id": event.id, "text": event.text, "logprob": round(event.logprob, 6)}
    if event.sample:
        record["sample"] = event.sample
    if event.top_logprobs:
        record["top_logprobs"] = [{"id": i, "token": tokenizer.piece(i), "logprob": round(lp, 6)} for i, lp in event.top_logprobs]
    return json.dumps(record, ensure_ascii=False)


def structured_value(generation: Generation, result: SampleResult) -> object:
    """The parsed value of a constrained sample (None when it is not complete, or unconstrained)."""
    spec = generation.settings.constraint
    if spec is None or not result.complete:
        return None
    return spec.parse(result.text)


def cut_short(generation: Generation) -> str | None:
    """Why a constrained generation is not a whole value (one line), or None when every sample is."""
    spec = generation.settings.constraint
    bad = [r for r in generation.results if spec is not None and r.complete is False]
    if not bad:
        return None
    reason = bad[0].stop_reason
    why = (
        f"stopped at -n {generation.settings.max_tokens} tokens"
        if reason == "length"
        else "was cut by a --stop string"
        if reason == "stop"
        else "ended early"
    )
    which = "the output" if len(generation.results) == 1 else f"{len(bad)} of {len(generation.results)} samples"
    return f"{which} {why} inside the {as_flags(spec.option)} value, so it is not valid"  # type: ignore[union-attr]


def summary(generation: Generation) -> dict[str, object]:
    stats = generation.stats
    record: dict[str, object] = {
        "event": "done",
        "text": generation.text,
        "stop_reason": generation.results[0].stop_reason,
        "prompt_tokens": stats.prompt_tokens,
        "prefilled_tokens": stats.prefilled_tokens,
        "generated_tokens": stats.generated_tokens,
        "prefill_seconds": round(stats.prefill_seconds, 4),
        "decode_seconds": round(stats.decode_seconds, 4),
        "prefill_tokens_per_s": round(stats.prefill_rate, 2),
        "decode_tokens_per_s": round(stats.decode_rate, 2),
        "seed": generation.seed,
    }
    if generation.settings.lookup:
        record["drafted_tokens"], record["accepted_tokens"] = stats.drafted_tokens, stats.accepted_tokens
    if generation.settings.constraint is not None:
        record["data"] = structured_value(generation, generation.results[0])
        record["complete"] = bool(generation.results[0].complete)
        record["constraint_seconds"] = round(stats.constraint_seconds, 4)  # masks and matcher steps, within decode_seconds
    if len(generation.results) > 1:
        record["samples"] = [{"text": r.text, "stop_reason": r.stop_reason, "tokens": len(r.token_ids)} for r in generation.results]
        if generation.settings.constraint is not None:
            for entry, r in zip(record["samples"], generation.results):  # type: ignore[call-overload]
                entry["data"], entry["complete"] = structured_value(generation, r), bool(r.complete)
    return record


def stats_line(generation: Generation) -> str:
    s, stats = summary(generation), generation.stats
    reasons = ", ".join(sorted({str(r.stop_reason) for r in generation.results}))
    lookup = f" | lookup: {stats.accepted_tokens} of {stats.drafted_tokens} drafted tokens accepted" if generation.settings.lookup else ""
    if generation.settings.constraint is not None:
        lookup += f" | constraint: {1e3 * stats.constraint_seconds / max(stats.generated_tokens, 1):.2f} ms/token"
    return (
        f"prompt: {s['prompt_tokens']} tokens ({s['prefilled_tokens']} prefilled, {s['prefill_tokens_per_s']:.1f} tok/s) | "
        f"generated: {s['generated_tokens']} tokens ({s['decode_tokens_per_s']:.1f} tok/s){lookup} | stop: {reasons}"
    )


def sample_header(index: int, total: int) -> str:
    return f"--- sample {index + 1} of {total} ---\n"


def print_generation(generation: Generation, tokenizer: Tokenizer, *, as_json: bool, stats: bool, truncate_ok: bool = False) -> None:
    """Stream the generation to stdout. Raises typer.Exit(130) after an interrupt, and typer.Exit(1)
    when a constrained value was cut short (unless `truncate_ok`: then a warning)."""
    samples = len(generation.results)
    interrupted = False
    try:
        for event in generation:
            if as_json:
                write_out(token_json(event, tokenizer) + "\n")
            elif samples == 1:
                write_out(event.text)
    except KeyboardInterrupt:
        interrupted = True
        generation.mark_interrupted()
    if as_json:
        write_out(json.dumps(summary(generation), ensure_ascii=False) + "\n")
    elif samples > 1:  # samples decode as one batch, so each is printed whole once all are done
        write_out("\n\n".join(sample_header(i, samples) + r.text for i, r in enumerate(generation.results)) + "\n")
    elif generation.settings.constraint is not None:
        write_out("\n")  # the value alone on its line, for the program reading it
    elif generation.text and not generation.text.endswith("\n") and sys.stdout.isatty():
        write_out("\n")  # leave the shell prompt on its own line; pipes get the text exactly
    if stats:
        print(stats_line(generation), file=sys.stderr, flush=True)
    if interrupted:
        print("llama: interrupted", file=sys.stderr, flush=True)
        raise typer.Exit(130)
    problem = cut_short(generation)
    if problem and truncate_ok:
        print(f"llama: warning: {problem} (kept: --truncate-ok)", file=sys.stderr, flush=True)
    elif problem:
        print(f"llama: error: {problem}; raise -n (or pass --truncate-ok to keep it)", file=sys.stderr, flush=True)
        raise typer.Exit(1)
