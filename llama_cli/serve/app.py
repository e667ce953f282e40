"""The HTTP side of `llama serve`: a Starlette app speaking OpenAI's protocol over the batch scheduler.

Routes: POST /v1/chat/completions and /v1/completions (SSE when "stream": true), GET /v1/models,
GET /health (503 while the model loads), POST /tokenize, /detokenize and /apply-template.
Every client error is a 4xx JSON body in OpenAI's shape and one line in the log; a full waiting
line is a 503 with Retry-After; a client that goes away cancels its generation.

The model loads on a thread after the socket is bound, so /health answers at once. Shutdown
(SIGTERM, Ctrl-C) lets uvicorn finish the open requests, then stops the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import protocol
from .protocol import APIError, CompletionRequest

if TYPE_CHECKING:
    from ..api import LLM
    from ..generation import Generation
    from .scheduler import Job, Scheduler

log = logging.getLogger("llama.serve")


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None
    parallel: int = 4  # KV-cache rows: the most completions (choices) decoded in one batch
    ctx: int = 2048  # positions per row; a request's prompt + max_tokens must fit
    queue: int = 64  # requests waiting for a row before new ones get 503
    api_key: str | None = None
    cors_origin: str | None = None
    template: str = "auto"
    max_body: int = 4 << 20  # bytes in a request body
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")
        if self.ctx < 2:
            raise ValueError(f"ctx must be >= 2, got {self.ctx}")
        if self.queue < 0:
            raise ValueError(f"queue must be >= 0, got {self.queue}")


class Engine:
    """The loaded model, its scheduler, and the name it answers to; loads on a thread."""

    def __init__(self, config: ServeConfig, llm: LLM | None = None) -> None:
        self.config, self.llm = config, llm
        self.scheduler: Scheduler | None = None
        self.error: str | None = None
        self.name = config.model or "default"
        self.context = config.ctx
        self.ready = threading.Event()
        self.created = int(time.time())

    def start(self) -> None:
        threading.Thread(target=self._load, name="llama-serve-load", daemon=True).start()

    def _load(self) -> None:
        from ..api import load
        from ..registry import resolve_model
        from .scheduler import Scheduler

        try:
            if self.llm is None:
                path = resolve_model(self.config.model)
                self.name = self.config.model or path.stem
                self.llm = load(
                    path, dtype=self.config.dtype, device=self.config.device, threads=self.config.threads, cache=self.config.cache
                )  # type: ignore[arg-type]
                log.info("loaded %s (%s)", path, self.llm.path_label)
            self.context = min(self.config.ctx, self.llm.context_length)
            self.scheduler = Scheduler(self.llm.model, parallel=self.config.parallel, context=self.context, queue_limit=self.config.queue)
            self.scheduler.start()
            self.ready.set()
        except Exception as error:  # noqa: BLE001 (reported by /health and every request)
            self.error = f"{type(error).__name__}: {error}"
            log.error("cannot load the model: %s", self.error)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def check(self) -> tuple[LLM, Scheduler]:
        if self.error is not None:
            raise APIError(503, f"the model failed to load: {self.error}", code="model_load_failed")
        if not self.ready.is_set() or self.llm is None or self.scheduler is None:
            error = APIError(503, "the model is still loading; retry shortly", code="loading")
            error.headers["Retry-After"] = "1"
            raise error
        return self.llm, self.scheduler


def engine_of(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def read_json(request: Request) -> dict[str, Any]:
    limit = engine_of(request).config.max_body
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the body is over the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return protocol.parse_json(b"".join(chunks))


# ---------------------------------------------------------------- completions


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
        raise protocol.context_error(len(ids), request.max_tokens, context)
    max_tokens = request.max_tokens if request.max_tokens is not None else max(1, context // 4)
    keep = context - max_tokens
    if keep < 1:
        raise protocol.context_error(len(ids), request.max_tokens, context)
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
        return protocol.usage(self.generation.prompt_tokens, completion, self.job.cached_tokens)

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


# ---------------------------------------------------------------- the small endpoints


async def models(request: Request) -> Response:
    engine = engine_of(request)
    return JSONResponse(
        {"object": "list", "data": [{"id": engine.name, "object": "model", "created": engine.created, "owned_by": "llama"}]}
    )


async def health(request: Request) -> Response:
    engine = engine_of(request)
    if engine.error is not None:
        return JSONResponse({"status": "error", "error": engine.error}, status_code=503)
    if not engine.ready.is_set() or engine.scheduler is None:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok", "model": engine.name, "context": engine.context, **engine.scheduler.load})


async def tokenize(request: Request) -> Response:
    body = await read_json(request)
    llm, _ = engine_of(request).check()
    if "messages" in body:
        ids = prompt_ids(llm, protocol.parse_chat({"messages": body["messages"]}, max_n=1), engine_of(request).config.template)
    else:
        text = body.get("content", body.get("prompt"))
        if not isinstance(text, str):
            raise protocol.bad('content: expected a string (or "messages": a conversation)', "content", "invalid_type")
        add_special = body.get("add_special", True)
        if not isinstance(add_special, bool):
            raise protocol.bad("add_special: expected true or false", "add_special", "invalid_type")
        ids = llm.tokenizer.encode(text, bos=None if add_special else False)
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": engine_of(request).context})


async def detokenize(request: Request) -> Response:
    body = await read_json(request)
    llm, _ = engine_of(request).check()
    tokens = body.get("tokens")
    vocab = llm.model.config.vocab_size
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in tokens):
        raise protocol.bad(f"tokens: expected a list of token ids in 0..{vocab - 1}", "tokens", "invalid_value")
    return JSONResponse({"content": llm.tokenizer.decode(tokens)})


async def apply_template(request: Request) -> Response:
    from ..chat_template import ChatTemplateError, render_prompt, template_text

    body = await read_json(request)
    llm, _ = engine_of(request).check()
    parsed = protocol.parse_chat({"messages": body.get("messages"), "tools": body.get("tools")}, max_n=1)
    add = body.get("add_generation_prompt", True)
    if not isinstance(add, bool):
        raise protocol.bad("add_generation_prompt: expected true or false", "add_generation_prompt", "invalid_type")
    try:
        text = template_text(llm.checkpoint.chat_template, engine_of(request).config.template)
        prompt = render_prompt(llm.tokenizer, text, parsed.messages, add_generation_prompt=add, tools=parsed.tools)  # type: ignore[arg-type]
    except ChatTemplateError as error:
        raise protocol.bad(f"messages: {error}", "messages", "template_error") from None
    return JSONResponse({"prompt": prompt})


# ---------------------------------------------------------------- errors, auth, the app


async def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    log.warning("%d %s %s: %s", error.status, request.method, request.url.path, error.message)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}.get(
        error.status_code, str(error.detail)
    )
    return await api_error(
        request, APIError(error.status_code, message, code={404: "not_found", 405: "method_not_allowed"}.get(error.status_code))
    )


async def internal_error(request: Request, error: Exception) -> Response:
    log.error("500 %s %s: internal error: %s: %s", request.method, request.url.path, type(error).__name__, error)
    return JSONResponse(APIError(500, f"internal error: {type(error).__name__}", code="internal_error").body(), status_code=500)


class BearerAuth:
    """ASGI middleware: every route but /health needs `Authorization: Bearer KEY`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                error = APIError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key")
                log.warning("401 %s %s: %s", scope.get("method"), scope["path"], error.message)
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: ServeConfig, *, llm: LLM | None = None) -> Starlette:
    """The ASGI app; `llm` skips loading (tests and the Python API pass a loaded model)."""
    from starlette.middleware import Middleware

    engine = Engine(config, llm)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    middleware = []
    if config.cors_origin:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(
            Middleware(CORSMiddleware, allow_origins=[config.cors_origin], allow_methods=["GET", "POST"], allow_headers=["*"])
        )
    if config.api_key:
        middleware.append(Middleware(BearerAuth, key=config.api_key))
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/apply-template", apply_template, methods=["POST"]),
    ]
    handlers = {APIError: api_error, HTTPException: http_error, Exception: internal_error}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.engine = engine
    return app
