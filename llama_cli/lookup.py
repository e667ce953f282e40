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

Not done here: several samples at once (`samples > 1` decodes without lookup), and drafting from
a second, smaller model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from .generation import TokenEvent

if TYPE_CHECKING:
    from .generation import Generation

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


def decode_with_lookup(generation: Generation) -> Iterator[TokenEvent]:
    """Run `generation` (one sample) with prompt-lookup drafting; `Generation.__iter__` calls this.

    Yields the same TokenEvents as plain decoding, and counts `drafted_tokens` and
    `accepted_tokens` on the generation.
    """
    gen, settings = generation, generation.settings
    model, prompt = gen.model, gen.prompt_ids
    result = gen.results[0]
    gen._ensure_cache()
    device = model.device
    state = gen.sample_states()[0]  # the same generator, counts and constraint state as plain decoding
    index = NgramIndex(prompt)
    limit = min(model.max_seq_len, gen.context)  # no position may reach this

    started = time.perf_counter()
    with torch.inference_mode():
        rows = gen.prefill()  # (1, vocab)
        gen.prefill_seconds = time.perf_counter() - started
        position = len(prompt)  # where the next fed token goes; everything before it is valid in the cache
        draft: list[int] = []  # the drafted tokens fed after the first one in the last pass
        size = min(FIRST_DRAFT, settings.lookup)
        decode_started = time.perf_counter()
        try:
            while True:
                emitted: list[int] = []
                for j, row in enumerate(rows):  # row j: logits after the fed token and draft[:j]
                    token, events = gen.advance(0, row, state)
                    yield from events
                    if result.stop_reason is not None:
                        return
                    emitted.append(token)
                    index.append(token)
                    if j >= len(draft) or token != draft[j]:
                        break
                accepted = len(emitted) - 1  # drafted tokens confirmed; their cache entries are valid
                gen.accepted_tokens += accepted
                position += accepted
                if draft:  # on a CPU each drafted token costs a fraction of a step: draft long only while it pays
                    size = min(settings.lookup, size + 2) if accepted == len(draft) else max(1, size - 1)
                room = min(settings.max_tokens - len(result.token_ids), limit - position) - 1
                draft = index.draft(min(size, room))
                if state.rule is not None:  # tokens the constraint forces are the best draft; others must fit it
                    draft = state.rule.forced()[: max(0, min(settings.lookup, room))] or draft
                    draft = draft[: state.rule.valid_prefix(draft)]
                gen.drafted_tokens += len(draft)
                fed = torch.tensor([[emitted[-1], *draft]], device=device)  # (1, 1 + len(draft))
                rows = model(fed, position, last_only=not draft)[0].cpu()  # (1 + len(draft), vocab)
                position += 1
        finally:
            gen.decode_seconds = time.perf_counter() - decode_started
