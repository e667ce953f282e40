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

MAX_TOKEN_CHARS = 256  # no vocabulary's token spells more characters than this (the longest are runs of spaces or dashes)


def _turn_starts(messages: Sequence[ChatMessage], start: int) -> list[int]:
    """Where each turn begins: the first message after the system one, then every user message."""
    return [i for i in range(start, len(messages)) if i == start or messages[i]["role"] == "user"]


def _chars(messages: Sequence[ChatMessage]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


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
            start = 1 if checked[0]["role"] == "system" else 0
            turns = _turn_starts(checked, start)  # none when the conversation is a system message alone
            tail = checked[turns[self._first_turn_by_length(checked, turns)] :] if turns else []
            self._encode([*checked[:start], *tail])  # the part that can fit
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

        The fewest oldest turns are dropped, found by bisection (a few encodes, however long the
        history), after dropping at once the turns that cannot fit by their length in characters
        (no token spans more than MAX_TOKEN_CHARS). Raises ContextOverflowError when the message
        cannot fit even alone with the system message.
        """
        messages: list[ChatMessage] = [*self.messages, {"role": "user", "content": text}]
        start = 1 if messages[0]["role"] == "system" else 0
        turns = _turn_starts(messages, start)
        budget = self.context - self.max_tokens

        def fits(k: int) -> bool:  # with the first k turns dropped
            return len(self._encode([*messages[:start], *messages[turns[k] :]])) <= budget

        low, high = self._first_turn_by_length(messages, turns), len(turns) - 1  # the answer is in [low, high]: the newest turn stays
        if not fits(low):
            while low < high:
                middle = (low + high) // 2
                if fits(middle):
                    high = middle
                else:
                    low = middle + 1
        messages = [*messages[:start], *messages[turns[low] :]]
        ids = self._encode(messages)
        room = self.context - len(ids)
        if room < 1:
            raise ContextOverflowError.naming(
                f"this message makes a prompt of {len(ids)} tokens, which does not fit the {self.context}-token context; "
                "shorten it, or raise {context}"
            )
        return messages, ids, turns[low] - start, min(room, self.max_tokens)

    def _first_turn_by_length(self, messages: Sequence[ChatMessage], turns: list[int]) -> int:
        """The oldest turn from which on the messages could fit the context by their length in characters."""
        chars, first = 0, len(turns) - 1
        while first > 0 and chars + _chars(messages[turns[first - 1] : turns[first]]) <= self.context * MAX_TOKEN_CHARS:
            chars += _chars(messages[turns[first - 1] : turns[first]])
            first -= 1
        return first

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
