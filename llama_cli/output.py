"""Running a Generation to stdout: plain streamed text or JSON lines, and stats on stderr.

Shared by `generate`, the presets and anything else that prints a completion. Ctrl-C stops the
generation, keeps what was printed, still prints the stats or the final JSON event, and exits 130.
"""

from __future__ import annotations

import json
import sys

import typer

from .cli_common import write_out
from .generation import Generation, TokenEvent
from .tokenizer import Tokenizer


def token_json(event: TokenEvent, tokenizer: Tokenizer) -> str:
    record: dict[str, object] = {"event": "token", "id": event.id, "text": event.text, "logprob": round(event.logprob, 6)}
    if event.sample:
        record["sample"] = event.sample
    if event.top_logprobs:
        record["top_logprobs"] = [{"id": i, "token": tokenizer.piece(i), "logprob": round(lp, 6)} for i, lp in event.top_logprobs]
    return json.dumps(record, ensure_ascii=False)


def summary(generation: Generation) -> dict[str, object]:
    prefill_rate = generation.prefilled_tokens / generation.prefill_seconds if generation.prefill_seconds else 0.0
    decoded = max(generation.generated_tokens - len(generation.results), 0)  # the first token of each sample comes from prefill
    decode_rate = decoded / generation.decode_seconds if generation.decode_seconds else 0.0
    record: dict[str, object] = {
        "event": "done",
        "text": generation.text,
        "stop_reason": generation.results[0].stop_reason,
        "prompt_tokens": generation.prompt_tokens,
        "prefilled_tokens": generation.prefilled_tokens,
        "generated_tokens": generation.generated_tokens,
        "prefill_seconds": round(generation.prefill_seconds, 4),
        "decode_seconds": round(generation.decode_seconds, 4),
        "prefill_tokens_per_s": round(prefill_rate, 2),
        "decode_tokens_per_s": round(decode_rate, 2),
        "seed": generation.seed,
    }
    if generation.settings.lookup:
        record["drafted_tokens"], record["accepted_tokens"] = generation.drafted_tokens, generation.accepted_tokens
    if len(generation.results) > 1:
        record["samples"] = [{"text": r.text, "stop_reason": r.stop_reason, "tokens": len(r.token_ids)} for r in generation.results]
    return record


def stats_line(generation: Generation) -> str:
    s = summary(generation)
    reasons = ", ".join(sorted({str(r.stop_reason) for r in generation.results}))
    lookup = f" | lookup: {generation.accepted_tokens} of {generation.drafted_tokens} drafted tokens accepted" if generation.settings.lookup else ""
    return (
        f"prompt: {s['prompt_tokens']} tokens ({s['prefilled_tokens']} prefilled, {s['prefill_tokens_per_s']:.1f} tok/s) | "
        f"generated: {s['generated_tokens']} tokens ({s['decode_tokens_per_s']:.1f} tok/s){lookup} | stop: {reasons}"
    )


def sample_header(index: int, total: int) -> str:
    return f"--- sample {index + 1} of {total} ---\n"


def print_generation(generation: Generation, tokenizer: Tokenizer, *, as_json: bool, stats: bool) -> None:
    """Stream the generation to stdout. Raises typer.Exit(130) after an interrupt."""
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
    elif generation.text and not generation.text.endswith("\n") and sys.stdout.isatty():
        write_out("\n")  # leave the shell prompt on its own line; pipes get the text exactly
    if stats:
        print(stats_line(generation), file=sys.stderr, flush=True)
    if interrupted:
        print("llama: interrupted", file=sys.stderr, flush=True)
        raise typer.Exit(130)
