"""`llama serve`: the OpenAI-compatible server (llama_cli/serve/) on uvicorn.

Options are checked before anything heavy is imported; the model loads after the socket is
bound (GET /health says 503 until it is ready). Logs, one line per event, go to stderr.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Annotated

import typer

from ..errors import LlamaError, UsageError
from .bundles import bundled
from .errors import handles_errors
from .loader import ModelOptions
from .options import check_template, model_bundle

SERVER_PANEL = "Server"


@handles_errors
@bundled(model_options=model_bundle())
def serve(
    *,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on (loopback by default; anything else is reachable from the network).",
            rich_help_panel=SERVER_PANEL,
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", rich_help_panel=SERVER_PANEL)] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LLAMA_API_KEY",
            help="Require Authorization: Bearer KEY (default: $LLAMA_API_KEY).",
            rich_help_panel=SERVER_PANEL,
            show_default=False,
        ),
    ] = None,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel", help="Completions decoded together in one batch (KV-cache rows); more wait in line.", rich_help_panel=SERVER_PANEL
        ),
    ] = 4,
    queue: Annotated[
        int,
        typer.Option(
            "--queue", help="Requests that may wait for a free row; beyond it: 503 with Retry-After.", rich_help_panel=SERVER_PANEL
        ),
    ] = 64,
    cors_origin: Annotated[
        str | None,
        typer.Option(
            "--cors-origin",
            help="Send CORS headers allowing this origin (none by default).",
            rich_help_panel=SERVER_PANEL,
            show_default=False,
        ),
    ] = None,
    template: Annotated[
        str,
        typer.Option(
            "--template",
            help="Chat template: auto (the model's own), chatml, llama3, llama2, or a Jinja file.",
            rich_help_panel=SERVER_PANEL,
            callback=check_template,
        ),
    ] = "auto",
    model_options: ModelOptions,
) -> None:
    """Serve the model over OpenAI's HTTP API: /v1/chat/completions, /v1/completions, /v1/models.

    Concurrent requests decode in one batch (up to --parallel); a prompt that shares a prefix with
    an earlier one reuses its KV cache; a prompt that does not fit is refused, never cut silently.
    --ctx is the context of each row (default 2048, at most the model's).

    [b]Examples[/b]

      llama serve

      llama serve --parallel 8 --port 9000 --api-key sekrit

      curl -s localhost:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'
    """
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {port}")
    if parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {parallel}")
    if queue < 0:
        raise UsageError(f"--queue must be >= 0, got {queue}")
    m = model_options
    if m.ctx is not None and m.ctx < 2:
        raise UsageError(f"--ctx must be >= 2, got {m.ctx}")
    run_server(
        model=m.model,
        host=host,
        port=port,
        api_key=api_key or None,
        parallel=parallel,
        queue=queue,
        cors_origin=cors_origin,
        template=template,
        ctx=m.ctx or 2048,
        dtype=m.dtype,
        device=m.device,
        threads=m.threads,
        cache=not m.no_cache,
    )


def run_server(*, host: str, port: int, **options: object) -> None:
    """Bind, load, serve until SIGTERM or Ctrl-C (open requests finish first)."""
    import logging

    import uvicorn

    from ..serve.app import ServeConfig, create_app

    config = ServeConfig(**options)  # type: ignore[arg-type]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise LlamaError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    if not _is_loopback(host):
        print(
            f"llama: warning: listening on {host}: reachable from other machines{'' if config.api_key else ' without an API key'}",
            file=sys.stderr,
        )
    log = logging.getLogger("llama.serve")  # only the server's own lines: one per event, on stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("llama serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    print(f"llama serve: listening on http://{host}:{port} (GET /health says when the model is ready)", file=sys.stderr, flush=True)
    server = _server_class()(uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        log.removeHandler(handler)
    print("llama serve: stopped", file=sys.stderr)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM and Ctrl-C end in exit 0 once the open requests are done
        (uvicorn would re-raise the signal after draining, and the process would die of it)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
