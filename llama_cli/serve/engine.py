"""What the server holds: its settings (`ServeConfig`) and the model with its scheduler (`Engine`).

The model loads on a thread, so the socket answers (GET /health: 503 "loading") at once. Also the
request-body reader every route shares (a size limit, JSON objects only).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from . import protocol
from .protocol import APIError

if TYPE_CHECKING:
    from ..api import LLM
    from .scheduler import Scheduler

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
