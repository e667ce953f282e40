"""Generation as an iterator of small token records, consumed by the CLI, chat, presets and the API.

One prefill pass over the prompt, then one token per step reusing the KV cache. Several samples
of one prompt share a single prefill (the cache row is copied) and then decode as one batch.
Sample i draws from its own `torch.Generator` seeded with `seed + i`; the samples of a step are
drawn together (`choose_tokens`), each from its own generator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ContextOverflowError, ModelFormatError, UsageError
from .kv_cache import KVCache
from .lookup import PromptLookup
from .model import Transformer
from .progress import SILENT, Reporter
from .sampling import SamplingSettings, repeated_ngram_tokens, sample_rows
from .settings import GenerationSettings as GenerationSettings  # noqa: PLC0414 (re-exported: defined torch-free in settings.py)
from .stats import GenerationStats
from .stats import StopReason as StopReason  # noqa: PLC0414 (re-exported)
from .tokenizer import StreamDecoder, Tokenizer

if TYPE_CHECKING:
    from .constraints import RowMatcher

PREFILL_CHUNK = 512  # prompt tokens per forward pass during prefill


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, the text it releases (may be empty), and its log-probability."""

    id: int
    text: str
    logprob: float  # under the model's raw distribution, before temperature and filters
    sample: int = 0
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass
class SampleResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    stop_reason: StopReason | None = None
    complete: bool | None = None  # with a constraint: whether the text is a whole value (False: cut short)


@dataclass
class SampleState:
    """What one sample carries from step to step: its random stream, text decoder, stop matcher, token counts."""

    generator: torch.Generator
    decoder: StreamDecoder
    matcher: StopMatcher
    counts: torch.Tensor  # (vocab,) occurrences in the prompt and the sample so far, for the penalties
    rule: RowMatcher | None = None  # the constraint's parse state, when there is one


class StopMatcher:
    """Holds back text that might be the start of a stop string; cuts the text at the first match."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to release, whether a stop string was found)."""
        self.pending += text
        if not self.stops:
            released, self.pending = self.pending, ""
            return released, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            released, self.pending = self.pending[: min(hits)], ""
            return released, True
        hold = 0
        for stop in self.stops:  # longest tail of pending that begins some stop string
            for n in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:n]):
                    hold = n
                    break
        released, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return released, False

    def flush(self) -> str:
        released, self.pending = self.pending, ""
        return released


def context_budget(prompt_tokens: int, max_tokens: int, context: int) -> None:
    """Refuse (never truncate silently) a prompt that leaves no room for the tokens asked for."""
    if prompt_tokens + max_tokens > context:
        raise ContextOverflowError.naming(
            f"prompt of {prompt_tokens} tokens plus {{max_tokens}} {max_tokens} exceeds the context window of "
            f"{context} tokens; shorten the prompt, lower {{max_tokens}}, or set {{truncate}} to keep the end of the prompt"
        )


class Generation:
    """Iterate to generate. `results` and `stats` fill in as it runs.

    `cache` is the KV cache to decode in (kv_cache.py; default: a new one of this generation's
    own). `cached_prefix` says how many leading prompt tokens its row 0 already holds from an
    earlier call, so only the rest is prefilled (chat uses this). `progress` shows a prefill that
    lasts more than a couple of seconds (progress.py; the CLI passes one, the library is silent).

    One decode loop: each step feeds every sample's last token, and, with a drafting strategy
    (prompt lookup, a constraint's forced tokens; lookup.py), drafted tokens after it, verified in
    the same pass. Plain decoding is the loop without drafts.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        settings: GenerationSettings,
        *,
        context: int | None = None,
        cache: KVCache | None = None,
        cached_prefix: int = 0,
        progress: Reporter | None = None,
    ) -> None:
        if not prompt_ids:
            raise UsageError("the prompt is empty: give some text to continue")
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.prompt_ids = list(prompt_ids)
        self.context = min(context or model.config.context_length, model.config.context_length)
        context_budget(len(self.prompt_ids), settings.max_tokens, self.context)
        self.cache = cache if cache is not None else KVCache(model)
        self._owns_cache = cache is None
        self.cached_prefix = min(cached_prefix, len(self.prompt_ids) - 1)  # at least one token is always fed
        self.progress = progress
        self.seed = settings.seed if settings.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.results = [SampleResult() for _ in range(settings.samples)]
        self._prefill_seconds = 0.0
        self._decode_seconds = 0.0
        self._drafted = 0
        self._accepted = 0
        self.constraint = None
        if settings.constraint is not None:
            from .constraints import Constraint

            self.constraint = Constraint(settings.constraint, tokenizer, model.config.vocab_size)
        self._constraint_seconds = 0.0

    @property
    def stats(self) -> GenerationStats:
        return GenerationStats(
            prompt_tokens=len(self.prompt_ids),
            cached_tokens=self.cached_prefix,
            generated_tokens=sum(len(r.token_ids) for r in self.results),
            samples=len(self.results),
            prefill_seconds=self._prefill_seconds,
            decode_seconds=self._decode_seconds,
            drafted_tokens=self._drafted,
            accepted_tokens=self._accepted,
            constraint_seconds=self._constraint_seconds,
        )

    @property
    def text(self) -> str:
        return self.results[0].text

    def mark_interrupted(self) -> None:
        for result in self.results:
            if result.stop_reason is None:
                result.stop_reason = "interrupted"

    def prefill(self) -> torch.Tensor:
        """Run the uncached part of the prompt through the model into row 0; the last position's logits (1, vocab).

        Long prompts go in chunks: the attention scores of one pass grow with the square of its
        length, and Ctrl-C is honoured between chunks.
        """
        if self.cache.reusable(0, self.prompt_ids) < self.cached_prefix:
            raise ValueError(f"cached_prefix {self.cached_prefix} given, but the cache's row 0 does not hold it")
        start, end = self.cached_prefix, len(self.prompt_ids)
        logits = torch.empty(0)
        with self.progress.wait("prefill", end - start, "tokens") if self.progress else SILENT as wait:
            while start < end:
                stop = min(start + PREFILL_CHUNK, end)
                logits = self.cache.run([self.prompt_ids[start:stop]], start, last_only=True)[:, -1].cpu()
                wait.advance(stop - start)
                start = stop
        if not bool(torch.isfinite(logits).all()):  # NaN would sample token 0 for ever, silently
            raise ModelFormatError(
                "the model's output is NaN or infinite: its weights hold NaN/inf values or overflow; the file is damaged"
            )
        return logits

    def __iter__(self) -> Iterator[TokenEvent]:
        try:
            yield from self._decode()
        finally:
            if self._owns_cache:
                self.cache = KVCache(self.model)  # a finished generation holds no cache memory (presets keep many)

    def _decode(self) -> Iterator[TokenEvent]:
        n, settings = self.settings.samples, self.settings
        cache = self.cache
        cache.ensure(n, min(len(self.prompt_ids) + settings.max_tokens, self.context))
        states = self.sample_states()
        drafter = PromptLookup(self.prompt_ids, settings.lookup) if settings.lookup else None
        limit = min(cache.length, self.context)  # no position may reach this

        started = time.perf_counter()
        with torch.inference_mode():
            logits = self.prefill()  # (1, vocab)
            if n > 1:
                cache.copy_row(0, range(1, n), len(self.prompt_ids))
                logits = logits.expand(n, -1)
            self._prefill_seconds = time.perf_counter() - started
            rows = logits[:, None]  # (n, 1 + drafted, vocab): sample i's logits after its fed token and each drafted one
            position = len(self.prompt_ids)  # where the next fed token goes; everything before it is valid in the cache
            draft: list[int] = []  # the tokens drafted after sample 0's fed token in the last pass (one sample only)
            decode_started = time.perf_counter()
            try:
                while True:
                    fed = []
                    live = [i for i, result in enumerate(self.results) if result.stop_reason is None]
                    firsts = dict(zip(live, choose_tokens([(self, i, states[i]) for i in live], rows[live, 0])))  # row 0s together
                    for i, result in enumerate(self.results):
                        if result.stop_reason is not None:
                            fed.append([0])  # a finished sample's row still runs, ignored, so the batch keeps its shape
                            continue
                        emitted: list[int] = []
                        for j, row in enumerate(rows[i]):  # row j: logits after the fed token and draft[:j]
                            token = firsts[i] if j == 0 else choose_tokens([(self, i, states[i])], row[None])[0]
                            yield from self.emit(i, token, row, states[i])
                            emitted.append(token)
                            if result.stop_reason is not None:
                                break
                            if drafter is not None:
                                drafter.record(token)
                            if j >= len(draft) or token != draft[j]:
                                break
                        fed.append(emitted[-1:])
                    if all(r.stop_reason is not None for r in self.results):
                        break
                    if drafter is not None:  # one sample: `emitted` is its tokens of this pass
                        accepted = len(emitted) - 1  # drafted tokens confirmed; their cache entries are valid
                        self._accepted += accepted
                        position += accepted
                        room = min(settings.max_tokens - len(self.results[0].token_ids), limit - position) - 1
                        draft = drafter.next(accepted, len(draft), room, states[0].rule)
                        self._drafted += len(draft)
                        fed[0] += draft
                    rows = cache.run(fed, position, last_only=not draft).cpu()  # (n, 1 + len(draft), vocab)
                    position += 1
            finally:
                self._decode_seconds = time.perf_counter() - decode_started

    def sample_states(self) -> list[SampleState]:
        """Fresh per-sample state; sample i draws from a generator seeded with seed + i."""
        vocab = self.model.config.vocab_size
        prompt = torch.tensor([i for i in self.prompt_ids if 0 <= i < vocab], dtype=torch.int64)
        states = []
        for i in range(self.settings.samples):
            counts = torch.zeros(vocab, dtype=torch.int32)
            counts.index_add_(0, prompt, torch.ones_like(prompt, dtype=torch.int32))
            generator = torch.Generator().manual_seed(self.seed + i)
            rule = self.constraint.matcher(budget=self.settings.max_tokens) if self.constraint is not None else None
            decoder, matcher = StreamDecoder(self.tokenizer, self.prompt_ids), StopMatcher(self.settings.stop)
            states.append(SampleState(generator, decoder, matcher, counts, rule))
        return states

    def constrain(self, rule: RowMatcher | None, logits: torch.Tensor) -> torch.Tensor:
        """The logits the sampler sees: the constraint's forbidden tokens at -inf."""
        if rule is None:
            return logits
        started = time.perf_counter()
        masked = rule.mask(logits)
        self._constraint_seconds += time.perf_counter() - started
        return masked

    def allowed(self, i: int, logits: torch.Tensor, state: SampleState) -> torch.Tensor:
        """The logits (vocab,) sample i chooses from: end-of-sequence banned under ignore_eos, the
        constraint's forbidden tokens and (no_repeat_ngram) repeats at -inf.

        A step is `choose_tokens` (which calls this) then `emit`, in the decode loop here and in the
        server's batch scheduler (serve/scheduler.py) alike.
        """
        if self.settings.ignore_eos:
            banned = [t for t in self.tokenizer.special.stop_ids if t < logits.shape[-1]]
            logits = logits.clone()
            logits[banned] = float("-inf")
        allowed = self.constrain(state.rule, logits)
        if repeats := repeated_ngram_tokens(self.results[i].token_ids, self.settings.no_repeat_ngram):
            unrepeated = allowed.clone()
            unrepeated[repeats] = float("-inf")  # logprobs (from `logits`) stay the model's own
            if state.rule is None or bool(np.isfinite(unrepeated.numpy()).any()):  # a constraint's forced token may repeat
                allowed = unrepeated
        return allowed

    def emit(self, i: int, token: int, logits: torch.Tensor, state: SampleState) -> list[TokenEvent]:
        """Record `token` as sample i's next (chosen from `logits`, before `allowed`): the event it
        releases (none or one); `results[i].stop_reason` says whether the sample ended."""
        return list(self._emit(i, token, logits, state.decoder, state.matcher, state.counts, state.rule))

    def _emit(
        self,
        i: int,
        token: int,
        logits: torch.Tensor,
        decoder: StreamDecoder,
        matcher: StopMatcher,
        counts: torch.Tensor,
        rule: RowMatcher | None = None,
    ) -> Iterator[TokenEvent]:
        """Record sample i's chosen token. `logits` are from before the constraint: logprobs are the model's."""
        result, settings = self.results[i], self.settings
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if settings.logprobs:
            values, indices = torch.topk(logprobs, settings.logprobs)
            top = tuple(zip(indices.tolist(), values.tolist()))
        if token in self.tokenizer.special.stop_ids and not settings.ignore_eos:
            result.stop_reason = "eos"
            result.complete = rule.complete if rule is not None else None
            tail, _ = matcher.feed(decoder.flush())
            tail += matcher.flush()
            if tail:
                result.text += tail
                yield TokenEvent(id=token, text=tail, logprob=float(logprobs[token]), sample=i, top_logprobs=top)
            return
        result.token_ids.append(token)
        counts[token] += 1
        if rule is not None:
            started = time.perf_counter()
            rule.advance(token)
            self._constraint_seconds += time.perf_counter() - started
        text, stopped = matcher.feed(decoder.push(token))
        done = rule is not None and rule.finished  # the value is whole and only end-of-sequence may follow: end here
        out_of_room = len(result.token_ids) >= settings.max_tokens or len(self.prompt_ids) + len(result.token_ids) >= self.context
        if not stopped and (out_of_room or done):
            more, stopped = matcher.feed(decoder.flush())
            text += more
            if not stopped:
                text += matcher.flush()
            result.stop_reason = "stop" if stopped else "eos" if done else "length"
        elif stopped:
            result.stop_reason = "stop"
        if rule is not None and result.stop_reason is not None:
            result.complete = rule.complete and result.stop_reason != "stop"  # a stop string cuts the value
        result.text += text
        yield TokenEvent(id=token, text=text, logprob=float(logprobs[token]), sample=i, top_logprobs=top)


def choose_tokens(rows: Sequence[tuple[Generation, int, SampleState]], logits: torch.Tensor) -> list[int]:
    """The next token of each row of logits (rows, vocab); row r is sample rows[r][1] of generation rows[r][0].

    Rows under the same sampling settings are sampled together (sampling.sample_rows), each from its
    own sample's generator, so a row's token does not depend on what else is in the batch: choice i
    of the server's `n` equals `--samples`' sample i and a lone request with seed + i.
    """
    allowed = [generation.allowed(i, row, state) for (generation, i, state), row in zip(rows, logits)]
    groups: dict[SamplingSettings, list[int]] = {}
    for r, (generation, _, _) in enumerate(rows):
        groups.setdefault(generation.settings.sampling, []).append(r)
    tokens = [0] * len(rows)
    for settings, members in groups.items():
        states = [rows[r][2] for r in members]
        counts = torch.stack([state.counts for state in states]) if settings.uses_penalties else None
        picked = sample_rows(torch.stack([allowed[r] for r in members]), settings, [state.generator for state in states], counts)
        for r, token in zip(members, picked):
            tokens[r] = token
    return tokens
