"""The conversation engine behind `llama chat`: messages, the KV cache that carries them, stats.

Every turn re-renders the whole conversation through the chat template and tokenizes it. The
longest common token prefix of that and of what is already in the KV cache (row 0) is reused; only
the rest is prefilled. Comparing tokens rather than turns keeps each reply exactly what a fresh run
on the re-rendered conversation would give: a re-tokenized reply does not always match the ids
that were generated, and a template may rewrite earlier turns.

When the conversation no longer fits the context (prompt plus `max_tokens`), the oldest turns are
dropped, never the system message; the Turn says how many messages went. No printing here: the
REPL (repl.py) shows replies, notices and stats. Conversation and tool files: conversation.py.

A session assumes it is the only user of the model's cache between its turns; if something else
reallocates or overwrites the cache, the session notices and prefills the conversation again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .chat_template import Tool, encode_conversation, template_text
from .conversation import ChatMessage, HistoryError, ToolsError, parse_messages, read_messages, read_tools, write_messages
from .errors import ContextOverflowError, UsageError
from .generation import Generation, GenerationSettings, StopReason, TokenEvent

# Re-exported: the CLI and tests reach conversation files through chat.
__all__ = ["ChatMessage", "ChatSession", "HistoryError", "ToolsError", "parse_messages", "read_messages", "read_tools", "write_messages"]

if TYPE_CHECKING:
    import torch

    from .api import LLM

FIRST_CACHE_POSITIONS = 1024  # the cache grows (doubling, up to the context) as the conversation does


@dataclass(frozen=True)
class TurnStats:
    prompt_tokens: int  # the whole rendered conversation, up to the assistant header
    cached_tokens: int  # of those, reused from the KV cache
    prefilled_tokens: int  # run through the model this turn
    generated_tokens: int
    prefill_seconds: float
    decode_seconds: float
    stop_reason: StopReason | None
    dropped_messages: int  # old messages dropped to make room this turn

    @property
    def prefill_rate(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_rate(self) -> float:
        decoded = max(self.generated_tokens - 1, 0)  # the first token comes from the prefill pass
        return decoded / self.decode_seconds if self.decode_seconds else 0.0


# ---------------------------------------------------------------- token prefixes


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# ---------------------------------------------------------------- the session


class ChatSession:
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
    ) -> None:
        if settings.samples != 1 or settings.lookup:
            raise UsageError("chat generates one sample at a time, without --lookup")
        if context is not None and context < 2:
            raise UsageError(f"--ctx must be at least 2, got {context}")
        self.llm, self.settings = llm, settings
        self.context = min(context or llm.context_length, llm.context_length)
        self.template = template_text(llm.checkpoint.chat_template, template)
        self.tools = None if tools is None else list(tools)  # JSON schemas for templates that take them (--tools)
        self.messages: list[ChatMessage] = []
        self.stats: list[TurnStats] = []
        self.cached_ids: list[int] = []  # tokens whose keys/values fill cache row 0, positions 0..len-1
        self._fingerprint: torch.Tensor | None = None
        self.load(messages)
        if system is not None:
            self.set_system(system)
        self._encode([*self.messages, {"role": "user", "content": "Hi"}])  # a bad template fails now, not mid-chat

    # -- the conversation

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    def set_system(self, text: str | None) -> None:
        """Replace the system message (None removes it; the template may then insert its default)."""
        if self.system is not None:
            del self.messages[0]
        if text is not None:
            self.messages.insert(0, {"role": "system", "content": text})

    def reset(self) -> None:
        """Forget the turns and their stats; the system message stays."""
        self.messages = self.messages[:1] if self.system is not None else []
        self.stats = []

    def load(self, messages: Sequence[ChatMessage]) -> None:
        """Continue from these messages (validated as a conversation and rendered once to check the template)."""
        checked = parse_messages([dict(m) for m in messages], "the conversation")
        if checked:  # some templates cannot render no messages at all (Llama 3.1 with tools reads messages[0])
            self._encode(checked)
        self.messages = checked

    def load_file(self, path: str | Path) -> int:
        """Replace the conversation with a saved one; on any error the current one is kept."""
        messages = read_messages(path)
        self.load(messages)
        self.stats = []  # the turns of another conversation
        return len(messages)

    def save_file(self, path: str | Path) -> int:
        write_messages(path, self.messages)
        return len(self.messages)

    def encode(self) -> list[int]:
        """The prompt ids for the conversation so far, up to a new assistant header."""
        return self._encode(self.messages)

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        return encode_conversation(self.llm.tokenizer, self.template, messages, tools=self.tools)

    # -- a turn

    def turn(self, text: str) -> Turn:
        """Add a user message and start the reply; old turns are dropped first if the context is full.

        Raises ContextOverflowError (and leaves the conversation as it was) when the message cannot
        fit even alone with the system message.
        """
        messages: list[ChatMessage] = [*self.messages, {"role": "user", "content": text}]
        ids = self._encode(messages)
        dropped = 0
        start = 1 if messages[0]["role"] == "system" else 0
        while len(ids) + self.settings.max_tokens > self.context and len(messages) - start > 1:
            end = start + 1  # the oldest turn: its user message and everything up to the next one
            while end < len(messages) - 1 and messages[end]["role"] != "user":
                end += 1
            del messages[start:end]
            dropped += end - start
            ids = self._encode(messages)
        room = self.context - len(ids)
        if room < 1:
            raise ContextOverflowError(
                f"this message makes a prompt of {len(ids)} tokens, which does not fit the {self.context}-token context; "
                "shorten it, or raise --ctx"
            )
        settings = self.settings if room >= self.settings.max_tokens else dataclasses.replace(self.settings, max_tokens=room)
        reused = self._prepare_cache(ids, len(ids) + settings.max_tokens)
        generation = Generation(self.llm.model, self.llm.tokenizer, ids, settings, context=self.context, cached_prefix=reused)
        self._remember_cache(ids[: generation.cached_prefix])  # what stays valid whatever happens to this turn
        self.messages = messages
        return Turn(self, generation, dropped)

    # -- the cache

    def _prepare_cache(self, ids: list[int], needed: int) -> int:
        """Make room for `needed` positions in row 0; return how many leading ids the cache already holds."""
        model = self.llm.model
        if not self._cache_intact():
            self._remember_cache([])
        reused = common_prefix(ids, self.cached_ids)
        if model.max_seq_len < needed or model.max_batch < 1:
            capacity = min(self.context, max(needed, 2 * model.max_seq_len, FIRST_CACHE_POSITIONS))
            old = [layer.attention.kv_cache for layer in model.layers]
            kept = [(cache.k[:1, :, :reused].clone(), cache.v[:1, :, :reused].clone()) for cache in old] if reused else []
            self._remember_cache([])  # nothing is valid until the copy below completes
            model.setup_cache(1, capacity)
            for layer, (k, v) in zip(model.layers, kept):  # carry the reused prefix into the bigger cache
                layer.attention.kv_cache.update(0, k, v)
            self._remember_cache(ids[:reused])
        return reused

    def _cache_intact(self) -> bool:
        """Whether row 0 still holds our tokens: the last layer's key at the last cached position is unchanged."""
        if not self.cached_ids or self._fingerprint is None:
            return False
        model = self.llm.model
        if model.max_seq_len < len(self.cached_ids):
            return False
        import torch

        return bool(torch.equal(model.layers[-1].attention.kv_cache.k[0, :, len(self.cached_ids) - 1], self._fingerprint))

    def _remember_cache(self, ids: list[int]) -> None:
        self.cached_ids = ids
        self._fingerprint = self.llm.model.layers[-1].attention.kv_cache.k[0, :, len(ids) - 1].clone() if ids else None

    @property
    def tokens_in_use(self) -> int:
        return len(self.cached_ids)


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
    def interrupted(self) -> bool:
        return self.generation.results[0].stop_reason == "interrupted"

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
        prompt, ids = generation.prompt_ids, result.token_ids
        # Every sampled token but the last was fed back (an end-of-turn token is sampled last and kept
        # out of token_ids). After an interrupt the last forward pass may be incomplete, and with
        # nothing generated yet, so may the prefill.
        if result.stop_reason == "eos":
            session._remember_cache(prompt + ids)
        elif ids:
            session._remember_cache(prompt + ids[:-1])
        else:
            session._remember_cache(prompt[: generation.cached_prefix])
        if result.stop_reason == "interrupted" and not result.text:
            session.messages.pop()  # interrupted before any text: drop the unanswered message
        else:
            reply: ChatMessage = {"role": "assistant", "content": result.text}
            if result.stop_reason == "interrupted":
                reply["interrupted"] = True
            session.messages.append(reply)
        self.stats = TurnStats(
            prompt_tokens=generation.prompt_tokens,
            cached_tokens=generation.cached_prefix,
            prefilled_tokens=generation.prefilled_tokens,
            generated_tokens=len(ids),
            prefill_seconds=generation.prefill_seconds,
            decode_seconds=generation.decode_seconds,
            stop_reason=result.stop_reason,
            dropped_messages=self.dropped,
        )
        session.stats.append(self.stats)
