"""Continuous batching: every running completion is one KV-cache row, and one forward pass decodes them all.

A worker thread owns the model. Each turn of its loop it drops cancelled requests, admits
waiting requests while rows are free and the turn's prefill stays under PREFILL_CHUNK tokens
(each prompt goes into a free row: `n` choices copy that row, one prefill for all), then runs
one decode step over every active row, each at its own position
(`KVCache.run(..., rows=, positions=)`). A finished choice leaves the batch at once and its row
keeps the tokens it holds, so a later request that starts with the same tokens (the next turn of
a chat) prefills only the rest: exact prefix reuse, through the same cache owner (kv_cache.py)
that `llama chat` keeps its one row in.

Sampling, stop strings, logprobs and stop reasons come from `choose_tokens` and `Generation.emit`,
the step the CLI's own decode loop takes, so a reply equals `llama generate`'s for the same
settings and choice i of `n` equals a lone request with seed + i. The rows of a step are sampled
together (one top-k and one draw for all rows with the same settings, each row from its own
generator).

Not here: HTTP, JSON, or any knowledge of OpenAI's format (app.py and protocol.py).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..generation import PREFILL_CHUNK, Generation, SampleState, choose_tokens
from ..kv_cache import KVCache
from ..model import Transformer

log = logging.getLogger("llama.serve")

Sink = Callable[[tuple[Any, ...]], None]  # ("token", i, TokenEvent) | ("done", i) | ("error", message) | ("prefilled", cached)


class QueueFull(Exception):
    """The waiting line is at its bound; the request should come back later."""


class Job:
    """One request: a Generation (its settings, seed and results) and where its events go."""

    def __init__(self, generation: Generation, sink: Sink) -> None:
        self.generation, self.sink = generation, sink
        self.cancelled = False
        self.cached_tokens = 0
        self.open = generation.settings.samples  # choices not finished yet

    @property
    def rows_needed(self) -> int:
        return self.generation.settings.samples


@dataclass
class Seq:
    """One choice in the batch: its cache row, how many positions are written there, the next token to feed."""

    job: Job
    index: int
    row: int
    state: SampleState
    written: int
    next_token: int = 0
    done: bool = field(default=False)


class Scheduler:
    """Runs the model on its own thread; `submit` jobs from any thread, their sinks are called from the worker."""

    def __init__(self, model: Transformer, *, parallel: int, context: int, queue_limit: int) -> None:
        self.model, self.context, self.queue_limit = model, context, queue_limit
        self.cache = KVCache(model)
        self.cache.ensure(parallel, context)
        self.parallel = parallel
        self.waiting: deque[Job] = deque()
        self.active: list[Seq] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="llama-serve-scheduler", daemon=True)
        self.steps = 0
        self.admitting = 0  # jobs taken off the waiting line and being prefilled (counted as active by `load`)

    # -- any thread

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.queue_limit:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        with self.cond:
            job.cancelled = True
            self.cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is running and waiting, then end the worker."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def load(self) -> dict[str, int]:
        return {"active": len(self.active) + self.admitting, "waiting": len(self.waiting), "free_rows": self.cache.free}

    # -- the worker

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cond:
                    while not self.waiting and not self.active and not self.stopping:
                        self.cond.wait()
                    if self.stopping and not self.waiting and not self.active:
                        return
                    self._drop_cancelled()
                admitted = 0  # prompt tokens prefilled this turn: a burst of short prompts joins at once, long ones take turns
                while admitted < PREFILL_CHUNK:
                    with self.cond:
                        if not self.waiting or self.cache.free < self.waiting[0].rows_needed:
                            break
                        job = self.waiting.popleft()
                        if job.cancelled:  # its client left after this turn's _drop_cancelled
                            continue
                        self.admitting += 1
                    try:
                        self._guarded([job], self._prefill, job)
                    finally:
                        with self.cond:
                            self.admitting -= 1
                    admitted += max(len(job.generation.prompt_ids) - job.cached_tokens, 1)
                if self.active:
                    self._guarded(sorted({id(s.job): s.job for s in self.active}.values(), key=id), self._decode)

    def _guarded(self, jobs: list[Job], step: Callable[..., None], *args: Any) -> None:
        """Run a step; if it fails (a bug, or memory), fail only the jobs it touched, and keep serving."""
        try:
            step(*args)
        except Exception as error:  # noqa: BLE001 (one bad step must not take the server down)
            log.error("internal error in the scheduler: %s: %s", type(error).__name__, error)
            for job in jobs:
                for seq in [s for s in self.active if s.job is job]:
                    self._finish(seq)
                job.sink(("error", f"internal error: {type(error).__name__}: {error}"))

    def _drop_cancelled(self) -> None:
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
        for seq in [s for s in self.active if s.job.cancelled]:
            seq.job.generation.mark_interrupted()
            self._finish(seq)

    def _prefill(self, job: Job) -> None:
        generation = job.generation
        ids, n = generation.prompt_ids, generation.settings.samples
        row, reused = self.cache.acquire(ids)
        job.cached_tokens = reused
        logits = torch.empty(0)
        start = reused
        try:
            while start < len(ids):
                stop = min(start + PREFILL_CHUNK, len(ids))
                logits = self.cache.run([ids[start:stop]], start, rows=[row], last_only=True)[0, -1].float().cpu()
                start = stop
        except BaseException:
            self.cache.release(row)
            raise
        others = [self.cache.acquire(())[0] for _ in range(n - 1)]
        if others:
            self.cache.copy_row(row, others, len(ids))
        job.sink(("prefilled", reused))
        seqs = [Seq(job, i, r, state, len(ids)) for i, (r, state) in enumerate(zip([row, *others], generation.sample_states()))]
        self.active.extend(seqs)
        self._advance(seqs, logits.expand(n, -1))  # (n, vocab): every choice starts from the prompt's last logits

    def _decode(self) -> None:
        seqs = list(self.active)
        tokens, rows, positions = [[s.next_token] for s in seqs], [s.row for s in seqs], [s.written for s in seqs]  # (B, 1), (B,), (B,)
        logits = self.cache.run(tokens, rows=rows, positions=positions, last_only=True)[:, -1].float().cpu()  # (B, vocab)
        self.steps += 1
        for seq in seqs:
            seq.written += 1
        self._advance(seqs, logits)

    def _advance(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        """Each seq's next token from its row of logits (len(seqs), vocab), drawn together; its events go to its job."""
        tokens = choose_tokens([(seq.job.generation, seq.index, seq.state) for seq in seqs], logits)
        for seq, row, token in zip(seqs, logits, tokens):
            generation = seq.job.generation
            for event in generation.emit(seq.index, token, row, seq.state):
                seq.job.sink(("token", seq.index, event))
            if generation.results[seq.index].stop_reason is not None:
                self._finish(seq)
                seq.job.sink(("done", seq.index))
            else:
                seq.next_token = token

    def _finish(self, seq: Seq) -> None:
        if seq.done:
            return
        seq.done = True
        self.active.remove(seq)
        self.cache.release(seq.row)
        seq.job.open -= 1
