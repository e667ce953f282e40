"""Enforcing a `schema.Spec` while decoding: one llguidance matcher per sample row.

    constraint = Constraint(spec, tokenizer, vocab_size)   # once per request (the vocabulary bridge is cached)
    row = constraint.matcher(budget=n)                     # one per sample; n: the tokens it may take
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

A budget: a value must end within the tokens generation may still take (-n), or it is cut and
invalid. Small models sometimes repeat themselves inside a value ("john_john_...", an array that
never closes) until the budget runs out. So, from the last `CLOSING_WINDOW` tokens of the
budget, each step measures the shortest way the matcher knows to finish (a dry run on a copy:
the constraint's forced tokens, else the first allowed of a few closing tokens such as `"`, `}`,
`]`, `0`). The model's likeliest tokens that would leave no such path in time are forbidden
(say, a new array element two tokens before the end), and once the path barely fits, the row
follows it. The result is a complete, valid value, shortened where it had to be; a value that
ends well before the budget is never touched.

Not done here: several constraints in one sequence (tool calls between free text), or rewinding
a matcher (drafts are checked with `valid_prefix` before they are fed, so nothing is undone).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import LlamaError, literal
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
        self.tokens = [
            _piece_bytes(tokenizer.piece(i)) if i < tokenizer.vocab_size and not tokenizer.is_special(i) else b"" for i in range(vocab_size)
        ]
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


CLOSING_WINDOW = 64  # tokens before the end of the budget from which a row checks that its value can still close
TOP_CHECKED = 4  # near the end of the budget: how many of the model's likeliest tokens are checked for dead ends
# Texts that end or shorten a JSON value (and most grammars' values), in the order a dry run tries
# them: an empty string, then closing several things at once, starting a new element (",") last.
CLOSING_TEXTS = ('""', '"}', '"]', '"', "...", ".", "}]", "]}", "}", "]", "0", "false", "null", "[]", "{}", ",", " ")


class Constraint:
    """A Spec compiled for one tokenizer and vocabulary; makes one `RowMatcher` per sample."""

    def __init__(self, spec: Spec, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.spec, self.vocab_size = spec, vocab_size
        self.tokenizer = ll_tokenizer(tokenizer, vocab_size)
        self.closing_tokens = []  # the CLOSING_TEXTS that are one token each, in order
        for text in CLOSING_TEXTS:
            ids = self.tokenizer.tokenize_str(text)
            if len(ids) == 1 and ids[0] not in self.closing_tokens:
                self.closing_tokens.append(ids[0])

    def matcher(self, budget: int | None = None) -> RowMatcher:
        """A row's parse state; `budget`: how many tokens the row may take in all (None: no limit)."""
        return RowMatcher(self, budget)


class RowMatcher:
    """The parse state of one sample: which tokens may come next, and whether the text is complete."""

    def __init__(self, constraint: Constraint, budget: int | None = None) -> None:
        import llguidance

        self.constraint, self.budget = constraint, budget
        self._matcher = llguidance.LLMatcher(constraint.tokenizer, constraint.spec.grammar, log_level=0)
        self._check()
        self.consumed = 0
        self._closing: list[int] = []  # once the budget is short: the tokens that finish the value, in order

    def _check(self) -> None:
        if self._matcher.is_error():
            raise LlamaError.naming(f"{self.constraint.spec.option}: {literal(self._matcher.get_error())}")

    def allowed(self, logits: np.ndarray | None = None) -> np.ndarray:
        """A boolean (vocab,) array: True for the tokens that may come next.

        With the row's `logits`, inside the budget's last CLOSING_WINDOW tokens, the model's
        favourite tokens that would leave no way to finish in time are forbidden too."""
        left = None if self.budget is None else self.budget - self.consumed
        near_the_end = left is not None and 0 < left <= CLOSING_WINDOW and not self._closing
        if near_the_end:
            self._plan_closing()
        if self._closing:
            only = np.zeros(self.constraint.vocab_size, dtype=bool)
            only[self._closing[0]] = True
            return only
        allowed = _allowed(self._matcher, self.constraint.vocab_size)
        self._check()
        if near_the_end and logits is not None:
            self._drop_dead_ends(allowed, logits, left)  # type: ignore[arg-type]
        return allowed

    def _drop_dead_ends(self, allowed: np.ndarray, logits: np.ndarray, left: int) -> None:
        """Forbid those of the TOP_CHECKED likeliest allowed tokens after which the dry run finds no
        way to finish in the `left - 1` tokens that would remain (a new array element with a few
        tokens to go). If that forbids everything, the row follows the shortest closing instead."""
        scores = np.where(allowed, logits, -np.inf)
        top = np.argpartition(scores, -TOP_CHECKED)[-TOP_CHECKED:]
        stops = self.constraint.tokenizer.eos_tokens
        for token in (int(t) for t in top):
            if allowed[token] and token not in stops and _length_after(self._matcher, self.constraint, token, left - 1) > left - 1:
                allowed[token] = False
        if not allowed.any():
            self._closing = _closing_path(self._matcher, self.constraint, limit=left, search=True) or []
            if self._closing:
                allowed[self._closing[0]] = True
            else:  # no way to finish that this dry run knows: leave the choice to the model
                allowed[:] = _allowed(self._matcher, self.constraint.vocab_size)

    def _plan_closing(self) -> None:
        """Follow the shortest known way to finish once it barely fits in the budget (the model
        writes freely until then; `_drop_dead_ends` keeps it from choosing a way that cannot fit)."""
        left = self.budget - self.consumed  # type: ignore[operator]
        path = _closing_path(self._matcher, self.constraint, limit=left)
        if path is not None and len(path) + 2 >= left:
            self._closing = _closing_path(self._matcher, self.constraint, limit=left, search=True) or path

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (vocab,) with every token the constraint forbids set to -inf (a new tensor).

        In numpy, not torch: a 49k-element torch op may go to the intra-op thread pool, which costs
        milliseconds on a busy CPU; numpy's single-threaded select costs ~50 microseconds.
        """
        values = logits.detach().float().cpu().numpy()
        return torch.from_numpy(np.where(self.allowed(values), values, np.float32(-np.inf)))

    def advance(self, token: int) -> None:
        """Consume a chosen token (end-of-sequence included); a token the mask forbade is a bug."""
        if not self._matcher.consume_token(token):
            raise LlamaError.naming(
                f"internal error: {self.constraint.spec.option}: token {token} was not allowed ({literal(self._matcher.get_error())})"
            )
        self.consumed += 1
        if self._closing:
            self._closing = self._closing[1:] if self._closing[0] == token else []

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens` (a draft) the constraint would accept in a row from here."""
        return self._matcher.validate_tokens(tokens) if tokens else 0

    def forced(self) -> list[int]:
        """Tokens the constraint alone decides from here (e.g. the next key of an object): a free draft."""
        return list(self._closing) or self._matcher.compute_ff_tokens()

    @property
    def complete(self) -> bool:
        """The text so far is a whole value (end-of-sequence may come now)."""
        return self._matcher.is_accepting()

    @property
    def finished(self) -> bool:
        """Nothing but end-of-sequence may follow."""
        return self._matcher.is_stopped()


def _allowed(matcher: llguidance.LLMatcher, vocab_size: int) -> np.ndarray:
    bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)  # one bit per token, little-endian words
    return np.unpackbits(bits, bitorder="little")[:vocab_size].view(bool)


def _closing_path(matcher: llguidance.LLMatcher, constraint: Constraint, *, limit: int, search: bool = False) -> list[int] | None:
    """The tokens that finish the value from `matcher`'s state (ending with end-of-sequence), within
    `limit` tokens; None if this dry run finds no such path. `matcher` itself is not moved.

    Each step takes the constraint's forced tokens, else the first allowed closing token (with
    `search`: the allowed closing token whose own dry run is shortest, e.g. "]" rather than a new
    element), else the first allowed token of all; it ends as soon as end-of-sequence is allowed."""
    trial, path = matcher.deep_copy(), []
    eos = constraint.tokenizer.eos_token
    while len(path) < limit:
        if trial.is_accepting():
            return [*path, eos]
        forced = trial.compute_ff_tokens()
        if forced:
            step = forced[: limit - len(path)]
        else:
            allowed = _allowed(trial, constraint.vocab_size)
            if trial.is_error():
                return None
            candidates = [t for t in constraint.closing_tokens if allowed[t]] or np.flatnonzero(allowed)[:1].tolist()
            if not candidates:
                return None
            if search and len(candidates) > 1:
                candidates.sort(key=lambda token: _length_after(trial, constraint, token, limit - len(path) - 1))
            step = candidates[:1]
        for token in step:
            if not trial.consume_token(token):
                return None
            path.append(token)
    return None


def _length_after(matcher: llguidance.LLMatcher, constraint: Constraint, token: int, limit: int) -> int:
    """The length of the plain dry run after `token` (a large number when it finds none)."""
    trial = matcher.deep_copy()
    if not trial.consume_token(token):
        return 1 << 30
    path = _closing_path(trial, constraint, limit=limit)
    return 1 << 30 if path is None else len(path)
