"""What a generation and a chat turn report: token counts and timings, torch-free.

`Generation.stats` (generation.py) builds a `GenerationStats`; the CLI's stats line and JSON,
the presets' totals and chat's `/stats` all read it. A chat turn adds its own fields
(`TurnStats`), and `llama chat --server` (serve/chat_client.py) fills the same record from the
server's usage counts, so the REPL prints both alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopReason = Literal["eos", "stop", "length", "interrupted"]


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    cached_tokens: int  # leading prompt tokens reused from a KV cache (chat, the server)
    generated_tokens: int  # over every sample
    samples: int
    prefill_seconds: float
    decode_seconds: float
    drafted_tokens: int = 0  # drafting (prompt lookup, constraints): tokens drafted and verified
    accepted_tokens: int = 0  # of those, kept
    constraint_seconds: float = 0.0  # masks and matcher steps, within decode_seconds

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens actually run through the model (the rest came from the cache)."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_rate(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_rate(self) -> float:
        decoded = max(self.generated_tokens - self.samples, 0)  # the first token of each sample comes from prefill
        return decoded / self.decode_seconds if self.decode_seconds else 0.0


@dataclass(frozen=True)
class TurnStats(GenerationStats):
    """A chat turn's generation stats, and the turn's own."""

    stop_reason: StopReason | None = None
    dropped_messages: int = 0  # old messages dropped to make room this turn
