"""The conversation engine behind `llama chat`: a model, the KV cache that carries the conversation, turns.

Every turn re-renders the whole conversation through the chat template and tokenizes it. The
longest common token prefix of that and of what the session's KV cache holds (kv_cache.py, row 0)
is reused; only the rest is prefilled. Comparing tokens rather than turns keeps each reply
exactly what a fresh run on the re-rendered conversation would give: a re-tokenized reply does
not always match the ids that were generated, and a template may rewrite earlier turns.

The messages, how old turns are dropped to fit the context, and how a reply enters the
conversation: chat_history.py (shared with `llama chat --server`, serve/chat_client.py). No
printing here: the REPL (repl.py) shows replies, notices and stats. Conversation and tool files:
conversation.py.

The session owns its cache: nothing else writes into it, and the cache itself records which
tokens it holds, so what is reused is known, not guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .chat_history import ChatHistory
from .chat_template import Tool, encode_conversation, template_text
from .conversation import ChatMessage, HistoryError, ToolsError, parse_messages, read_messages, read_tools, write_messages
from .errors import UsageError
from .generation import Generation, GenerationSettings, TokenEvent
from .kv_cache import KVCache
from .settings import context_window
from .stats import TurnStats

# Re-exported: the CLI and tests reach conversation files through chat.
__all__ = ["ChatMessage", "ChatSession", "HistoryError", "ToolsError", "parse_messages", "read_messages", "read_tools", "write_messages"]

if TYPE_CHECKING:
    from .api import LLM
    from .progress import Reporter

FIRST_CACHE_POSITIONS = 1024  # the cache grows (doubling, up to the context) as the conversation does


# ---------------------------------------------------------------- the session


class ChatSession(ChatHistory):
    """A conversation with a loaded model; `turn(text)` starts a reply to iterate over."""

    def __init__(
        self,
        llm: LLM,
        settings: GenerationSettings,
        *,
        system: str | None = None,
        template: str = "auto",
        context: int | None = None,
        messages: Sequence[ChatMessage] = (),
        tools: Sequence[Tool] | None = None,
        progress: Reporter | None = None,
    ) -> None:
        if settings.samples != 1 or settings.lookup:
            raise UsageError.naming("chat generates one sample at a time, without {lookup}")
        if context is not None and context < 2:
            raise UsageError.naming(f"{{context}} must be at least 2, got {context}")
        super().__init__()
        self.llm, self.settings, self.max_tokens = llm, settings, settings.max_tokens
        self.context = context_window(context, llm.context_length)
        self.template = template_text(llm.checkpoint.chat_template, template)
        self.tools = None if tools is None else list(tools)  # JSON schemas for templates that take them (--tools)
        self.cache = KVCache(llm.model)  # row 0 holds the conversation's tokens from the last turn
        self.progress = progress  # shows a turn's prefill when it lasts more than a couple of seconds
        self.load(messages)
        if system is not None:
            self.set_system(system)
        system = self.messages[:1] if self.system is not None else []
        self._encode([*system, {"role": "user", "content": "Hi"}])  # a bad template fails now, not mid-chat

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        return encode_conversation(self.llm.tokenizer, self.template, messages, tools=self.tools)

    # -- a turn

    def turn(self, text: str) -> Turn:
        """Add a user message and start the reply; old turns are dropped first if the context is full.

        Raises ContextOverflowError (and leaves the conversation as it was) when the message cannot
        fit even alone with the system message.
        """
        messages, ids, dropped, max_tokens = self.fit(text)
        settings = self.settings if max_tokens == self.settings.max_tokens else dataclasses.replace(self.settings, max_tokens=max_tokens)
        needed = len(ids) + settings.max_tokens
        if self.cache.length < needed:  # grow by doubling (up to the context), keeping what row 0 holds
            self.cache.ensure(1, min(self.context, max(needed, 2 * self.cache.length, FIRST_CACHE_POSITIONS)))
        reused = self.cache.reusable(0, ids)
        llm = self.llm
        generation = Generation(
            llm.model, llm.tokenizer, ids, settings, context=self.context, cache=self.cache, cached_prefix=reused, progress=self.progress
        )
        self.messages = messages
        return Turn(self, generation, dropped)

    @property
    def tokens_in_use(self) -> int:
        return len(self.cache.held[0]) if self.cache.batch else 0


class Turn:
    """One reply: iterate for its TokenEvents. It enters the history when iteration ends or on
    `finish()` (call that after a Ctrl-C that arrived outside the iteration; it is idempotent)."""

    def __init__(self, session: ChatSession, generation: Generation, dropped: int) -> None:
        self.session, self.generation, self.dropped = session, generation, dropped
        self.stats: TurnStats | None = None

    @property
    def max_tokens(self) -> int:
        return self.generation.settings.max_tokens

    @property
    def text(self) -> str:
        return self.generation.text

    @property
    def settings(self) -> GenerationSettings:
        return self.generation.settings

    @property
    def stop_reason(self) -> str | None:
        return self.generation.results[0].stop_reason

    @property
    def complete(self) -> bool | None:
        """With a constraint: whether the reply is a whole value."""
        return self.generation.results[0].complete

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == "interrupted"

    def __iter__(self) -> Iterator[TokenEvent]:
        try:
            yield from self.generation
        finally:
            self.finish()

    def finish(self) -> None:
        if self.stats is not None:
            return
        generation, session = self.generation, self.session
        result = generation.results[0]
        if result.stop_reason is None:
            generation.mark_interrupted()
        self.stats = TurnStats(**dataclasses.asdict(generation.stats), stop_reason=result.stop_reason, dropped_messages=self.dropped)
        session.finish_turn(result.text, result.stop_reason, self.stats)
