"""The HTTP the `--server` commands speak, over the standard library's http.client.

A warm `llama generate --server` should answer in a fraction of a second, and importing httpx
(with httpcore, which imports trio and anyio when they are installed) cost more than the rest of
the run together: 0.3-0.5 s of a ~0.9 s first token on the shared 2-core machine. These commands
send one JSON request at a time to a server they were told about, so a connection per request and
line-by-line reading of the reply (SSE) are all they need.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

from ..errors import LlamaError, UsageError, literal

CONNECT_SECONDS = 10.0


class Reply:
    """A response whose body is read on demand: `lines()` for SSE, `json()` or `read()` at once."""

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str) -> None:
        self.connection, self.response, self.url = connection, response, url
        self.status = response.status

    def read(self) -> bytes:
        try:
            return self.response.read()
        except (OSError, http.client.HTTPException) as error:
            raise broken(self.url, error) from None

    def json(self) -> Any:
        return json.loads(self.read())

    def lines(self) -> Iterator[str]:
        """The body line by line, without line ends (an SSE stream's `data: ...` lines and blanks)."""
        try:
            for raw in self.response:
                yield raw.decode("utf-8").rstrip("\r\n")
        except (OSError, http.client.HTTPException) as error:
            raise broken(self.url, error) from None

    def close(self) -> None:
        """Close the connection: a server streaming a reply cancels its generation."""
        self.connection.close()


def broken(url: str, error: BaseException) -> LlamaError:
    return LlamaError(f"the connection to the server at {url} broke: {error}")


def send(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Reply:
    """One request to the server at `url` (with $LLAMA_API_KEY as the bearer key when set)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError.naming(f"{{server}} {literal(url)}: expected a URL such as http://127.0.0.1:8080")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=CONNECT_SECONDS)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key := os.environ.get("LLAMA_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(None)  # a reply may take as long as the generation does
        connection.request(method, parts.path.rstrip("/") + path, body=None if body is None else json.dumps(body), headers=headers)
        return Reply(connection, connection.getresponse(), url)
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        raise LlamaError(f"cannot reach the server at {url}: {error} (is `llama serve` running?)") from None
