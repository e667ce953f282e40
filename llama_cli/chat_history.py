"""The messages of a chat, how they are fitted into the context, and how a finished turn enters them.

Shared by the local session (chat.py, a model and its KV cache in this process) and the remote
one (serve/chat_client.py, `llama chat --server`), so both drop the same old turns, keep the same
system message, save and load the same files, and record interrupted replies the same way. Torch-free:
the remote session must start without importing torch.

When the conversation no longer fits the context (prompt plus `max_tokens`), the oldest turns
are dropped, never the system message; the turn says how many messages went. If even the newest
message alone leaves fewer than `max_tokens` positions, the reply gets what is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .conversation import ChatMessage, parse_messages, read_messages, write_messages
from .errors import ContextOverflowError
from .stats import StopReason, TurnStats


class ChatHistory:
    """Messages, per-turn stats, and `_encode(messages) -> prompt ids`, which subclasses provide."""

    context: int
    max_tokens: int

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self.stats: list[TurnStats] = []

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        raise NotImplementedError

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

    def fit(self, text: str) -> tuple[list[ChatMessage], list[int], int, int]:
        """The conversation with a new user message, fitted into the context: (messages, their prompt
        ids, how many old messages were dropped, the most tokens the reply may have).

        Raises ContextOverflowError when the message cannot fit even alone with the system message.
        """
        messages: list[ChatMessage] = [*self.messages, {"role": "user", "content": text}]
        ids = self._encode(messages)
        dropped = 0
        start = 1 if messages[0]["role"] == "system" else 0
        while len(ids) + self.max_tokens > self.context and len(messages) - start > 1:
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
        return messages, ids, dropped, min(room, self.max_tokens)

    def finish_turn(self, text: str, stop_reason: StopReason | None, stats: TurnStats) -> None:
        """The reply enters the conversation (marked when interrupted; an interrupted turn with no
        text drops its unanswered message instead) and its stats are kept."""
        if stop_reason == "interrupted" and not text:
            self.messages.pop()
        else:
            reply: ChatMessage = {"role": "assistant", "content": text}
            if stop_reason == "interrupted":
                reply["interrupted"] = True
            self.messages.append(reply)
        self.stats.append(stats)
