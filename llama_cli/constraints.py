"""Enforcing a `schema.Spec` while decoding: one llguidance matcher per sample row.

    constraint = Constraint(spec, tokenizer, vocab_size)   # once per request (the vocabulary bridge is cached)
    row = constraint.matcher()                             # one per sample
    logits = row.mask(logits)                              # disallowed tokens -> -inf, before the sampler
    row.advance(token)                                     # after the token is chosen
    row.complete                                           # the text so far is a whole value

The mask goes on the logits the sampler receives, so every sampling setting (greedy, temperature,
top-k/p, min-p, penalties) chooses among allowed tokens only. End-of-sequence tokens are allowed
exactly when the text so far is complete; once nothing but the end can follow, only they are
(`finished`: generation.py then ends the sample without spending a step on the end token).

llguidance (Microsoft's low-level guidance: an Earley parser over a lazily built lexer, with a
token trie) computes a mask in tens of microseconds for typical schemas, so masking costs a small
fraction of a decode step. References: llguidance README and docs/; Willard and Louf, "Efficient
Guided Generation for Large Language Models" (2023), for the idea of masking by a grammar.

Not done here: several constraints in one sequence (tool calls between free text), or rewinding
a matcher (drafts are checked with `valid_prefix` before they are fed, so nothing is undone).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import LlamaError
from .schema import Spec
from .tokenizer import BPETokenizer, SentencePieceTokenizer, Tokenizer

if TYPE_CHECKING:
    import llguidance

_BRIDGES: weakref.WeakKeyDictionary[Tokenizer, dict[int, Any]] = weakref.WeakKeyDictionary()


class _PieceTokenizer:
    """What llguidance.TokenizerWrapper wants from a tokenizer that is not a `tokenizers` JSON:
    each token's bytes, the special ids, and an encode function.

    The encode function must give tokens whose bytes are exactly the text's; sentencepiece's own
    adds a leading space (its dummy prefix), so this one matches the longest piece at each byte
    instead. llguidance uses it only to tokenize forced text; masks allow every tokenization.
    """

    def __init__(self, tokenizer: SentencePieceTokenizer, vocab_size: int) -> None:
        self.eos_token_id = tokenizer.special.eos_id
        self.bos_token_id = tokenizer.special.bos_id
        self.special_token_ids = [i for i in range(min(vocab_size, tokenizer.vocab_size)) if tokenizer.is_special(i)]
        self.tokens = [_piece_bytes(tokenizer.piece(i)) if i < tokenizer.vocab_size and not tokenizer.is_special(i) else b"" for i in range(vocab_size)]
        self._ids: dict[bytes, int] = {}
        for i, data in enumerate(self.tokens):
            if data:
                self._ids.setdefault(data, i)
        self._longest = max(map(len, self._ids), default=1)

    def __call__(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        ids, start = [], 0
        while start < len(data):
            for end in range(min(len(data), start + self._longest), start, -1):
                if (found := self._ids.get(data[start:end])) is not None:
                    ids.append(found)
                    start = end
                    break
            else:
                start += 1  # a byte no piece spells (no byte fallback): skipped
        return ids


def _piece_bytes(piece: str) -> bytes:
    """A sentencepiece piece as the bytes it writes: '▁' is a space, '<0x0A>' is one byte."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def ll_tokenizer(tokenizer: Tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer` (its token trie), built once per tokenizer and vocabulary size."""
    import llguidance

    cache = _BRIDGES.setdefault(tokenizer, {})
    if vocab_size not in cache:
        stops = sorted(i for i in tokenizer.special.stop_ids if i < vocab_size) or None
        if isinstance(tokenizer, BPETokenizer):
            description: Any = tokenizer._backend.to_str()  # the `tokenizers` pipeline, as llguidance reads it natively
        elif isinstance(tokenizer, SentencePieceTokenizer):
            description = llguidance.TokenizerWrapper(_PieceTokenizer(tokenizer, vocab_size))
        else:
            raise LlamaError(f"structured output does not support {type(tokenizer).__name__} tokenizers")
        cache[vocab_size] = llguidance.LLTokenizer(description, n_vocab=vocab_size, eos_token=stops)
    return cache[vocab_size]


class Constraint:
    """A Spec compiled for one tokenizer and vocabulary; makes one `RowMatcher` per sample."""

    def __init__(self, spec: Spec, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.spec, self.vocab_size = spec, vocab_size
        self.tokenizer = ll_tokenizer(tokenizer, vocab_size)

    def matcher(self) -> RowMatcher:
        return RowMatcher(self)


class RowMatcher:
    """The parse state of one sample: which tokens may come next, and whether the text is complete."""

    def __init__(self, constraint: Constraint) -> None:
        import llguidance

        self.constraint = constraint
        self._matcher = llguidance.LLMatcher(constraint.tokenizer, constraint.spec.grammar, log_level=0)
        self._check()

    def _check(self) -> None:
        if self._matcher.is_error():
            raise LlamaError(f"{self.constraint.spec.option}: {self._matcher.get_error()}")

    def allowed(self) -> np.ndarray:
        """A boolean (vocab,) array: True for the tokens that may come next."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)  # one bit per token, little-endian words
        self._check()
        return np.unpackbits(bits, bitorder="little")[: self.constraint.vocab_size].view(bool)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (vocab,) with every token the constraint forbids set to -inf (a new tensor).

        In numpy, not torch: a 49k-element torch op may go to the intra-op thread pool, which costs
        milliseconds on a busy CPU; numpy's single-threaded select costs ~50 microseconds.
        """
        values = logits.detach().float().cpu().numpy()
        return torch.from_numpy(np.where(self.allowed(), values, np.float32(-np.inf)))

    def advance(self, token: int) -> None:
        """Consume a chosen token (end-of-sequence included); a token the mask forbade is a bug."""
        if not self._matcher.consume_token(token):
            raise LlamaError(f"internal error: {self.constraint.spec.option}: token {token} was not allowed ({self._matcher.get_error()})")

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens` (a draft) the constraint would accept in a row from here."""
        return self._matcher.validate_tokens(tokens) if tokens else 0

    def forced(self) -> list[int]:
        """Tokens the constraint alone decides from here (e.g. the next key of an object): a free draft."""
        return self._matcher.compute_ff_tokens()

    @property
    def complete(self) -> bool:
        """The text so far is a whole value (end-of-sequence may come now)."""
        return self._matcher.is_accepting()

    @property
    def finished(self) -> bool:
        """Nothing but end-of-sequence may follow."""
        return self._matcher.is_stopped()
