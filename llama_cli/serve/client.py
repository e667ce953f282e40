"""`llama generate --server URL`: the same command against a running `llama serve`, without torch.

The request carries the command's sampling options; the reply streams back as SSE with our
extension `return_token_ids` (each token's id, the raw stop reason, the seed used), so the output
is `llama generate`'s: plain streamed text, `--samples` printed whole at the end, `--json` token
events and the `done` summary, `--stats` on stderr. Errors keep the local exit codes: a request
the server refuses as invalid is a usage error (2), a prompt that does not fit the context or an
unreachable server is 1, Ctrl-C is 130. Timings are the client's: prefill is the time to the
first token, decode the rest.

Not here: --lookup, structured output, --logprobs, --tools, or a different model than the
server's (those run locally).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import typer

from ..errors import ContextOverflowError, LlamaError, UsageError
from ..textio import write_out
from .http_client import Reply, send


def server_url(option: str | None) -> str | None:
    """--server, else $LLAMA_SERVER; None runs locally."""
    url = option or os.environ.get("LLAMA_SERVER") or None
    return url.rstrip("/") if url else None


def remote_generate(
    server: str,
    text: str,
    *,
    chat: bool,
    system: str | None,
    samples: int,
    options: dict[str, Any],
    json_output: bool,
    stats: bool,
    truncate: bool,
) -> None:
    url = server.rstrip("/")
    body: dict[str, Any] = {**options, "n": samples, "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
    body["truncate"] = truncate
    if chat or system is not None:
        path = "/v1/chat/completions"
        body["messages"] = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": text}]
        if json_output:
            body["logprobs"] = True
    else:
        path, body["prompt"] = "/v1/completions", text
        if json_output:
            body["logprobs"] = 0
    texts, reasons, counts = [""] * samples, [None] * samples, [0] * samples  # per sample, from the stream
    usage: dict[str, Any] = {}
    seed = options.get("seed")
    started = time.perf_counter()
    first = 0.0
    interrupted = False
    reply = None
    try:
        reply = send(url, "POST", path, body)
        if reply.status != 200:
            raise refusal(reply.status, reply.read(), url)
        for chunk in events(reply):
            if chunk.get("usage"):
                usage, seed = chunk["usage"], chunk.get("seed", seed)
            for choice in chunk.get("choices", []):
                i = choice["index"]
                piece = choice["text"] if "text" in choice else (choice.get("delta") or {}).get("content") or ""
                if choice.get("stop_reason"):
                    reasons[i], counts[i] = choice["stop_reason"], choice.get("tokens", counts[i])
                ids = choice.get("token_ids") or []
                if not ids:
                    continue
                first = first or time.perf_counter()
                texts[i] += piece
                if json_output:
                    write_out(json.dumps(_token_event(ids[0], piece, choice, i), ensure_ascii=False) + "\n")
                elif samples == 1:
                    write_out(piece)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if reply is not None:
            reply.close()  # after Ctrl-C: the server cancels the generation
    ended = time.perf_counter()
    reasons = [r or "interrupted" for r in reasons]
    generated = sum(counts)  # tokens of the text (an end-of-sequence token is not one), as the server counted them
    prompt_tokens = int(usage.get("prompt_tokens", 0))
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
    prefill_s, decode_s = (first or ended) - started, ended - (first or ended)
    summary: dict[str, Any] = {
        "event": "done", "text": texts[0], "stop_reason": reasons[0], "prompt_tokens": prompt_tokens,
        "prefilled_tokens": prompt_tokens - cached, "generated_tokens": generated,
        "prefill_seconds": round(prefill_s, 4), "decode_seconds": round(decode_s, 4),
        "prefill_tokens_per_s": round((prompt_tokens - cached) / prefill_s, 2) if prefill_s else 0.0,
        "decode_tokens_per_s": round(max(generated - samples, 0) / decode_s, 2) if decode_s else 0.0,
        "seed": seed,
    }  # fmt: skip
    if samples > 1:
        summary["samples"] = [{"text": t, "stop_reason": r, "tokens": c} for t, r, c in zip(texts, reasons, counts)]
    if json_output:
        write_out(json.dumps(summary, ensure_ascii=False) + "\n")
    elif samples > 1:
        write_out("\n\n".join(f"--- sample {i + 1} of {samples} ---\n{t}" for i, t in enumerate(texts)) + "\n")
    elif texts[0] and not texts[0].endswith("\n") and sys.stdout.isatty():
        write_out("\n")
    if stats:
        print(
            f"prompt: {prompt_tokens} tokens ({prompt_tokens - cached} prefilled, {summary['prefill_tokens_per_s']:.1f} tok/s) | "
            f"generated: {generated} tokens ({summary['decode_tokens_per_s']:.1f} tok/s) | stop: {', '.join(sorted(set(reasons)))} "
            f"| server: {url}",
            file=sys.stderr,
            flush=True,
        )
    if interrupted:
        print("llama: interrupted", file=sys.stderr, flush=True)
        raise typer.Exit(130)


def events(reply: Reply) -> Iterator[dict[str, Any]]:
    """The JSON chunks of an SSE reply, up to `data: [DONE]`; a chunk reporting an error raises."""
    for line in reply.lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise LlamaError(f"the server failed: {chunk['error'].get('message')}")
        yield chunk


def _token_event(token: int, text: str, choice: dict[str, Any], sample: int) -> dict[str, Any]:
    record: dict[str, Any] = {"event": "token", "id": token, "text": text}
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or [entry["logprob"] for entry in logprobs.get("content") or []]
    if values:
        record["logprob"] = round(values[0], 6)
    if sample:
        record["sample"] = sample
    return record


def refusal(status: int, raw: bytes, url: str) -> LlamaError:
    try:
        error = json.loads(raw)["error"]
        message, code = str(error.get("message")), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code = raw[:200].decode("utf-8", "replace"), None
    if code == "context_length_exceeded":
        return ContextOverflowError(f"{message} (server {url})")
    if status in (400, 413, 422):
        return UsageError(f"the server refused the request: {message}")
    return LlamaError(f"the server at {url} answered {status}: {message}")


def refuse_local_only(**given: object) -> None:
    """A usage error for options that only a local run has (the server has its own model and template)."""
    used = [name for name, value in given.items() if value not in (None, False, 0, "auto")]
    if used:
        raise UsageError(
            f"{', '.join('--' + name.replace('_', '-') for name in used)} cannot be combined with --server (run without --server)"
        )
