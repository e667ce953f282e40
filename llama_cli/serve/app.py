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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import protocol
from .completions import chat_completions, prompt_ids, text_completions
from .engine import Engine, ServeConfig, engine_of, read_json
from .protocol import APIError

if TYPE_CHECKING:
    from ..api import LLM

log = logging.getLogger("llama.serve")

__all__ = ["ServeConfig", "create_app"]


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
