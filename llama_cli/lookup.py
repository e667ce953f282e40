"""Prompt-lookup decoding: draft tokens by copying from the prompt, verify them in one forward pass.

Summaries, translations and answers copy spans of their input (names, numbers, whole phrases).
When the last few generated tokens also occur earlier in the sequence, the tokens that followed
them there are a cheap guess at what comes next. Those drafted tokens are fed to the model
together with the last real token; one forward pass returns the logits after each of them, and
tokens are then sampled position by position as in plain decoding, for as long as each sampled
token equals the drafted one. The first disagreement ends the pass: its sampled token is kept,
the rest of the draft is discarded (their keys and values are simply overwritten later, because
the cache is addressed by explicit positions).

Every emitted token is drawn from the same distribution, with the same generator calls in the
same order, as in plain decoding, so the output is the same: identical text for greedy decoding
and for a fixed seed (up to float rounding, since a pass over several tokens adds in a different
order than one over a single token). Only the speed changes.

References: Saxena, "Prompt Lookup Decoding" (2023); transformers' `prompt_lookup_num_tokens`
(PromptLookupCandidateGenerator); Leviathan et al., "Fast Inference from Transformers via
Speculative Decoding" (2023), of which this is the special case of a deterministic draft.

The decode loop itself is `Generation.__iter__` (generation.py): this module only drafts.
Not done here: several samples at once (`samples > 1` decodes without lookup), and drafting from
a second, smaller model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .constraints import RowMatcher

MAX_NGRAM = 3  # match the last 3 tokens if possible, else the last 2
MIN_NGRAM = 2  # a single matching token drafts too often in vain, and every drafted token costs compute
FIRST_DRAFT = 2  # drafted tokens at first; +2 after a draft accepted whole, -1 after a miss (up to `lookup`)


class NgramIndex:
    """Where each n-gram of a growing token sequence last occurred, for drafting continuations.

    Maps every n-gram (MIN_NGRAM <= n <= MAX_NGRAM) that has a following token to the position of
    that token, keeping the most recent occurrence. Appending a token costs O(MAX_NGRAM).
    """

    def __init__(self, tokens: Sequence[int], *, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.next_position: dict[tuple[int, ...], int] = {}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        # The n-grams that end just before this token now have a continuation: this token.
        end = len(self.tokens)
        for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
            self.next_position[tuple(self.tokens[end - n : end])] = end
        self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the longest n-gram ending the sequence, or []."""
        if limit <= 0:
            return []
        end = len(self.tokens)
        for n in range(min(self.max_ngram, end), self.min_ngram - 1, -1):
            start = self.next_position.get(tuple(self.tokens[end - n :]))
            if start is not None:
                return self.tokens[start : start + limit]
        return []


class PromptLookup:
    """The prompt-lookup drafting strategy of `Generation`'s decode loop (one sample).

    `record` each emitted token; `next` gives the draft to feed after the last one. The draft
    grows by 2 after a draft accepted whole and shrinks by 1 after a miss: on a CPU each drafted
    token costs a fraction of a step, so drafts are long only while they pay. With a constraint,
    the tokens it forces are the best draft, and any draft is cut where it stops fitting.
    """

    def __init__(self, prompt: Sequence[int], limit: int) -> None:
        self.index = NgramIndex(prompt)
        self.limit = limit
        self.size = min(FIRST_DRAFT, limit)

    def record(self, token: int) -> None:
        self.index.append(token)

    def next(self, accepted: int, offered: int, room: int, rule: RowMatcher | None) -> list[int]:
        """The next draft, given that `accepted` of the `offered` tokens drafted last time were kept
        and at most `room` more may be drafted."""
        if offered:
            self.size = min(self.limit, self.size + 2) if accepted == offered else max(1, self.size - 1)
        draft = self.index.draft(min(self.size, room))
        if rule is not None:
            draft = rule.forced()[: max(0, min(self.limit, room))] or draft
            draft = draft[: rule.valid_prefix(draft)]
        return draft
