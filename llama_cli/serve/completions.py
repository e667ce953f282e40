"""/v1/chat/completions and /v1/completions: a checked request becomes a scheduler Job; its events become OpenAI replies.

The prompt is encoded (chat messages through the model's template), fitted to the context (a 400
naming both numbers unless "truncate": true), turned into GenerationSettings and queued. The
reply is one JSON body, or SSE chunks ending in `data: [DONE]`; a client that goes away cancels
its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import protocol
from .engine import engine_of, read_json
from .protocol import APIError, CompletionRequest

if TYPE_CHECKING:
    from ..api import LLM
    from ..generation import Generation
    from .scheduler import Job, Scheduler

log = logging.getLogger("llama.serve")


def prompt_ids(llm: LLM, request: CompletionRequest, template: str) -> list[int]:
    from ..chat_template import ChatTemplateError

    if request.messages is None:
        assert request.prompt is not None
        if isinstance(request.prompt, list):
            bad = [t for t in request.prompt if not 0 <= t < llm.model.config.vocab_size]
            if bad:
                raise protocol.bad(
                    f"prompt: token id {bad[0]} is outside the vocabulary (0..{llm.model.config.vocab_size - 1})", "prompt", "invalid_value"
                )
            return request.prompt
        return llm.tokenizer.encode(request.prompt)
    try:
        from ..chat_template import encode_conversation, template_text

        return encode_conversation(
            llm.tokenizer, template_text(llm.checkpoint.chat_template, template), request.messages, tools=request.tools
        )  # type: ignore[arg-type]
    except ChatTemplateError as error:
        raise protocol.bad(f"messages: {error}", "messages", "template_error") from None


def fit(ids: list[int], request: CompletionRequest, context: int) -> tuple[list[int], int]:
    """The prompt and max_tokens to run: refuse what does not fit, unless the request asked to truncate."""
    room = context - len(ids)
    if request.max_tokens is not None and request.max_tokens <= room:
        return ids, request.max_tokens
    if request.max_tokens is None and room >= 1:
        return ids, room
    if not request.truncate:
        raise protocol.context_error(len(ids), request.max_tokens, context, "messages" if request.kind == "chat" else "prompt")
    max_tokens = request.max_tokens if request.max_tokens is not None else max(1, context // 4)
    keep = context - max_tokens
    if keep < 1:
        raise protocol.context_error(len(ids), request.max_tokens, context, "messages" if request.kind == "chat" else "prompt")
    log.info("prompt of %d tokens cut to its last %d to fit the %d-token context with max_tokens %d", len(ids), keep, context, max_tokens)
    return ids[-keep:], max_tokens


def start_generation(request: Request, parsed: CompletionRequest) -> tuple[Generation, Job, asyncio.Queue[tuple[Any, ...]], Scheduler]:
    from ..api import make_settings
    from ..errors import LlamaError
    from ..generation import Generation
    from .scheduler import Job, QueueFull

    engine = engine_of(request)
    llm, scheduler = engine.check()
    ids = prompt_ids(llm, parsed, engine.config.template)
    ids, max_tokens = fit(ids, parsed, engine.context)
    try:
        constraint = None
        if parsed.response_format is not None:
            from ..schema import spec_from_response_format

            constraint = spec_from_response_format(parsed.response_format)
        settings = make_settings(
            max_tokens=max_tokens, samples=parsed.n, logprobs=parsed.logprobs or 0, constraint=constraint, **parsed.options
        )
        generation = Generation(llm.model, llm.tokenizer, ids, settings, context=engine.context)
    except (LlamaError, TypeError) as error:
        raise protocol.bad(str(error).replace("--", ""), code="invalid_value") from None
    queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def sink(item: tuple[Any, ...]) -> None:  # called on the scheduler's thread
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    job = Job(generation, sink)
    try:
        scheduler.submit(job)
    except QueueFull as error:
        busy = APIError(503, f"the server is busy ({error}); retry later", code="server_busy", kind="server_error")
        busy.headers["Retry-After"] = "1"
        raise busy from None
    return generation, job, queue, scheduler


class Reply:
    """Turns scheduler events into OpenAI choices: text so far, logprobs, finish reasons, usage."""

    def __init__(self, request: Request, parsed: CompletionRequest, generation: Generation, job: Job) -> None:
        self.parsed, self.generation, self.job = parsed, generation, job
        self.llm = engine_of(request).llm
        self.id = protocol.new_id(parsed.kind)
        self.model = parsed.model or engine_of(request).name
        self.created = int(time.time())
        self.logprobs: list[list[protocol.TokenLogprob]] = [[] for _ in range(parsed.n)]
        self.done = 0

    def token_logprob(self, index: int, event: Any) -> protocol.TokenLogprob | None:
        if self.parsed.logprobs is None:
            return None
        text = self.llm.tokenizer.decode([event.id], skip_special=False)  # type: ignore[union-attr]
        top = [(self.llm.tokenizer.decode([t], skip_special=False), p) for t, p in event.top_logprobs]  # type: ignore[union-attr]
        item = protocol.TokenLogprob(text, event.logprob, top)
        self.logprobs[index].append(item)
        return item

    def finish_reason(self, index: int) -> str:
        return protocol.FINISH.get(self.generation.results[index].stop_reason or "stop", "stop")

    def logprobs_body(self, items: list[protocol.TokenLogprob]) -> dict[str, Any] | None:
        if self.parsed.logprobs is None:
            return None
        return protocol.chat_logprobs(items) if self.parsed.kind == "chat" else protocol.completion_logprobs(items)

    def usage(self) -> dict[str, Any]:
        completion = sum(len(r.token_ids) + (r.stop_reason == "eos") for r in self.generation.results)
        return protocol.usage(len(self.generation.prompt_ids), completion, self.job.cached_tokens)

    def chunk(self, choices: list[dict[str, Any]]) -> bytes:
        return protocol.sse(protocol.envelope(self.parsed.kind, self.id, self.model, choices, chunk=True, created=self.created))

    def whole(self) -> dict[str, Any]:
        kind = self.parsed.kind
        choices = [
            protocol.choice(kind, i, r.text, self.finish_reason(i), self.logprobs_body(self.logprobs[i]), delta=False)
            for i, r in enumerate(self.generation.results)
        ]
        body = protocol.envelope(kind, self.id, self.model, choices, chunk=False, created=self.created)
        body["usage"] = self.usage()
        return body


async def completions(request: Request, parse: Callable[..., CompletionRequest]) -> Response:
    engine = engine_of(request)
    parsed = parse(await read_json(request), max_n=engine.config.parallel)
    generation, job, queue, scheduler = start_generation(request, parsed)
    reply = Reply(request, parsed, generation, job)
    if parsed.stream:
        return StreamingResponse(stream(reply, queue, scheduler), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    collect = asyncio.ensure_future(drain(reply, queue))
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not collect.done():
        collect.cancel()
        scheduler.cancel(job)
        log.info("client went away: request %s cancelled", reply.id)
        return Response(status_code=499)
    error = collect.result()
    if error is not None:
        raise APIError(500, error, code="internal_error")
    return JSONResponse(reply.whole())


async def disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def drain(reply: Reply, queue: asyncio.Queue[tuple[Any, ...]]) -> str | None:
    """Wait for every choice of a non-streaming request; an internal error's message, or None."""
    while reply.done < reply.parsed.n:
        item = await queue.get()
        if item[0] == "token":
            reply.token_logprob(item[1], item[2])
        elif item[0] == "done":
            reply.done += 1
        elif item[0] == "error":
            return str(item[1])
    return None


async def stream(reply: Reply, queue: asyncio.Queue[tuple[Any, ...]], scheduler: Scheduler) -> AsyncIterator[bytes]:
    kind, finished = reply.parsed.kind, False
    extended = reply.parsed.return_token_ids
    try:
        if kind == "chat":
            yield reply.chunk([protocol.choice(kind, i, "", None, None, delta=True, first=True) for i in range(reply.parsed.n)])
        while reply.done < reply.parsed.n:
            item = await queue.get()
            if item[0] == "token":
                index, event = item[1], item[2]
                logprob = reply.token_logprob(index, event)
                if event.text or logprob is not None or extended:
                    logprobs = reply.logprobs_body([logprob]) if logprob is not None else None
                    delta = protocol.choice(kind, index, event.text, None, logprobs, delta=True)
                    if extended:
                        delta["token_ids"] = [event.id]
                    yield reply.chunk([delta])
            elif item[0] == "done":
                reply.done += 1
                delta = protocol.choice(kind, item[1], "", reply.finish_reason(item[1]), None, delta=True)
                if extended:
                    result = reply.generation.results[item[1]]
                    delta["stop_reason"], delta["tokens"] = result.stop_reason, len(result.token_ids)
                yield reply.chunk([delta])
            elif item[0] == "error":
                yield protocol.sse(APIError(500, str(item[1]), code="internal_error").body())
                break
        if reply.parsed.include_usage:
            body = protocol.envelope(kind, reply.id, reply.model, [], chunk=True, created=reply.created)
            body["usage"] = reply.usage()
            if extended:
                body["seed"] = reply.generation.seed
            yield protocol.sse(body)
        yield protocol.sse("[DONE]")
        finished = True
    finally:
        if not finished:
            scheduler.cancel(reply.job)
            log.info("client went away: request %s cancelled", reply.id)


async def chat_completions(request: Request) -> Response:
    return await completions(request, protocol.parse_chat)


async def text_completions(request: Request) -> Response:
    return await completions(request, protocol.parse_completion)
