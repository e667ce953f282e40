"""`llama chat --server URL`: the chat REPL against a running `llama serve`, without torch.

The conversation lives here (chat_history.py, as in a local session: the same dropping of old
turns, /save, /load, /system, interrupted replies marked); each turn sends the whole conversation
to /v1/chat/completions and streams the reply. The server's KV cache keeps the earlier turns
(kv_cache.py: exact prefix reuse), so a turn prefills only what is new there, and the reply is
the one a local `llama chat` gives for the same settings.

A turn is one request when it fits: the server refuses a conversation that does not fit the
context before it generates anything, and only then are prompt sizes asked for (/tokenize, the
conversation rendered by the server's template) to drop old turns as a local session drops them.

Timings are the client's: prefill is the time to the first token, decode the rest. Not here:
--tools, --template, structured output, or a different model than the server's (those run
locally).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..chat_history import ChatHistory
from ..errors import ContextOverflowError, LlamaError, UsageError
from ..stats import StopReason, TurnStats
from .client import events, refusal
from .http_client import Reply, send

if TYPE_CHECKING:
    from ..conversation import ChatMessage
    from ..settings import GenerationSettings


@dataclass(frozen=True)
class ReplyPiece:
    """A streamed piece of the reply: its first token's id and its text (what the REPL prints)."""

    id: int
    text: str


class RemoteChatSession(ChatHistory):
    """A conversation with the model of a running server; `turn(text)` starts a reply to iterate over."""

    def __init__(
        self,
        server: str,
        settings: GenerationSettings,
        *,
        system: str | None = None,
        context: int | None = None,
        messages: Sequence[ChatMessage] = (),
    ) -> None:
        if context is not None and context < 2:
            raise UsageError.naming(f"{{context}} must be at least 2, got {context}")
        super().__init__()
        self.url, self.settings, self.max_tokens = server.rstrip("/"), settings, settings.max_tokens
        health = self._call("GET", "/health")
        if health.get("status") != "ok":
            raise LlamaError(f"the server at {self.url} is not ready: {health.get('error') or health.get('status')}")
        self.server_context = int(health["context"])
        self.context = min(context or self.server_context, self.server_context)
        self.tokens_in_use = 0  # prompt and reply of the last turn: what the server's cache row holds for us
        self.load(messages)
        if system is not None:
            self.set_system(system)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = send(self.url, method, path, body)
        try:
            if reply.status != 200 and not (path == "/health" and reply.status == 503):
                raise refusal(reply.status, reply.read(), self.url)
            return reply.json()  # type: ignore[no-any-return]
        finally:
            reply.close()

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        return list(self._call("POST", "/tokenize", {"messages": list(messages)})["tokens"])

    def turn(self, text: str) -> RemoteTurn:
        """Add a user message and start the reply; old turns are dropped first if the context is full.

        Raises ContextOverflowError (and leaves the conversation as it was) when the message cannot
        fit even alone with the system message.
        """
        before, started = self.messages, time.perf_counter()
        if self.context == self.server_context:  # else --ctx is below the server's: fit it here first
            self.messages = [*before, {"role": "user", "content": text}]
            try:
                return RemoteTurn(self, self._open(self.max_tokens), self.max_tokens, 0, started)
            except ContextOverflowError:
                self.messages = before
        messages, _, dropped, max_tokens = self.fit(text)
        self.messages, before = messages, self.messages
        try:
            return RemoteTurn(self, self._open(max_tokens), max_tokens, dropped, started)
        except BaseException:
            self.messages = before
            raise

    def _open(self, max_tokens: int) -> Reply:
        """Send this turn's request; the streaming reply, once the server has accepted it."""
        reply = send(self.url, "POST", "/v1/chat/completions", self.request(max_tokens))
        if reply.status != 200:
            raw = reply.read()
            reply.close()
            raise refusal(reply.status, raw, self.url)
        return reply

    def request(self, max_tokens: int) -> dict[str, Any]:
        """The body of this turn's request: the conversation and the sampling settings."""
        s, sampling = self.settings, self.settings.sampling
        body: dict[str, Any] = {
            "messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
            "max_tokens": max_tokens, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
            "min_p": sampling.min_p, "repeat_penalty": sampling.repetition_penalty, "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty, "ignore_eos": s.ignore_eos, "stop": list(s.stop) or None,
            "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True,
        }  # fmt: skip
        if s.seed is not None:
            body["seed"] = s.seed
        return body


class RemoteTurn:
    """One reply streamed from the server: iterate for its pieces. It enters the history when
    iteration ends or on `finish()` (after a Ctrl-C outside the iteration; idempotent)."""

    def __init__(self, session: RemoteChatSession, reply: Reply, max_tokens: int, dropped: int, started: float) -> None:
        self.session, self.reply, self.max_tokens, self.dropped = session, reply, max_tokens, dropped
        self.prompt_tokens = 0  # from the server's usage at the end
        self.settings = session.settings
        self.text = ""
        self.stop_reason: StopReason | None = None
        self.complete: bool | None = None  # structured output is not sent to a server
        self.stats: TurnStats | None = None
        self._tokens = self._received = self._cached = 0
        self._started, self._first = started, 0.0  # when the request was sent; the first token's arrival

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == "interrupted"

    def __iter__(self) -> Iterator[ReplyPiece]:
        try:
            yield from self._pieces(self.reply)
        finally:
            self.finish()

    def _pieces(self, reply: Reply) -> Iterator[ReplyPiece]:
        for chunk in events(reply):
            usage = chunk.get("usage") or {}
            if usage:
                self._cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
                self.prompt_tokens = int(usage.get("prompt_tokens", self.prompt_tokens))
            for choice in chunk.get("choices", []):
                if choice.get("stop_reason"):  # the last chunk: the raw stop reason and the tokens of the text
                    self.stop_reason, self._tokens = choice["stop_reason"], int(choice.get("tokens", self._tokens))
                ids = choice.get("token_ids") or []
                piece = (choice.get("delta") or {}).get("content") or ""
                if ids:
                    self._received += 1
                    self._first = self._first or time.perf_counter()
                    self.text += piece
                    yield ReplyPiece(ids[0], piece)

    def finish(self) -> None:
        if self.stats is not None:
            return
        self.reply.close()  # the server cancels a generation whose client went away
        if self.stop_reason is None:
            self.stop_reason = "interrupted"
        ended = time.perf_counter()
        first = self._first or ended
        self.stats = TurnStats(
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self._cached,
            generated_tokens=self._tokens if self.stop_reason != "interrupted" else self._received,
            samples=1,
            prefill_seconds=first - self._started,
            decode_seconds=ended - first,
            stop_reason=self.stop_reason,
            dropped_messages=self.dropped,
        )
        self.session.tokens_in_use = self.prompt_tokens + self._tokens
        self.session.finish_turn(self.text, self.stop_reason, self.stats)
