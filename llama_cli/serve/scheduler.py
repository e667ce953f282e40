"""Continuous batching: every running completion is one KV-cache row, and one forward pass decodes them all.

A worker thread owns the model. Each turn of its loop it drops cancelled requests, admits
waiting requests while rows are free and the turn's prefill stays under PREFILL_CHUNK tokens
(each prompt goes into a free row: `n` choices copy that row, one prefill for all), then runs
one decode step over every active row, each at its own position
(`Transformer.forward(..., rows=, positions=)`). A finished choice leaves the batch at once and
its row keeps the tokens it holds, so a later request that starts with the same tokens (the
next turn of a chat) prefills only the rest: exact prefix reuse, as `llama chat` does with its
one row (chat.py).

Sampling, stop strings, logprobs and stop reasons come from `Generation.advance`, the step the
CLI's own decode loop takes, so a reply equals `llama generate`'s for the same settings and
choice i of `n` equals a lone request with seed + i.

Not here: HTTP, JSON, or any knowledge of OpenAI's format (app.py and protocol.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..chat import common_prefix
from ..generation import PREFILL_CHUNK, Generation, SampleState
from ..model import Transformer

log = logging.getLogger("llama.serve")

Sink = Callable[[tuple[Any, ...]], None]  # ("token", i, TokenEvent) | ("done", i) | ("error", message) | ("prefilled", cached)


class QueueFull(Exception):
    """The waiting line is at its bound; the request should come back later."""


class CacheRows:
    """The server's KV cache, row by row: the one place that allocates, reuses, copies and frees rows.

    `held[r]` are the tokens whose keys and values fill row r from position 0: what a new request
    can reuse. A busy row belongs to one running choice.
    """

    def __init__(self, model: Transformer, rows: int, positions: int) -> None:
        self.model = model
        model.setup_cache(rows, positions)
        self.positions = positions
        self.held: list[list[int]] = [[] for _ in range(rows)]
        self.busy = [False] * rows
        self.used_at = [0.0] * rows

    @property
    def free(self) -> int:
        return self.busy.count(False)

    def allocate(self, ids: Sequence[int]) -> tuple[int, int]:
        """A free row for a prompt, preferring the longest cached prefix of `ids` (then the least recently used);
        returns (row, how many leading ids it already holds). At least one id is always left to run."""
        free = [r for r in range(len(self.busy)) if not self.busy[r]]
        if not free:
            raise RuntimeError("no free KV-cache row")
        best = max(free, key=lambda r: (common_prefix(ids, self.held[r]), -self.used_at[r]))
        reused = min(common_prefix(ids, self.held[best]), max(len(ids) - 1, 0))
        self.busy[best] = True
        self.held[best] = list(ids[:reused])
        return best, reused

    def hold(self, row: int, ids: Sequence[int]) -> None:
        """Row `row` now holds the keys and values of `ids` (positions 0..len-1)."""
        self.held[row] = list(ids)

    def copy(self, source: int, targets: list[int], length: int) -> None:
        self.model.copy_cache_row(source, targets, length)
        for target in targets:
            self.held[target] = self.held[source][:length]

    def release(self, row: int, ids: Sequence[int]) -> None:
        """The row is free again and keeps `ids` for reuse."""
        self.busy[row] = False
        self.held[row] = list(ids)
        self.used_at[row] = time.monotonic()


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
    """One choice in the batch: its cache row, the tokens written there, the next token to feed."""

    job: Job
    index: int
    row: int
    state: SampleState
    tokens: list[int]
    written: int
    next_token: int = 0
    done: bool = field(default=False)


class Scheduler:
    """Runs the model on its own thread; `submit` jobs from any thread, their sinks are called from the worker."""

    def __init__(self, model: Transformer, *, parallel: int, context: int, queue_limit: int) -> None:
        self.model, self.context, self.queue_limit = model, context, queue_limit
        self.rows = CacheRows(model, parallel, context)
        self.parallel = parallel
        self.waiting: deque[Job] = deque()
        self.active: list[Seq] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="llama-serve-scheduler", daemon=True)
        self.steps = 0

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
        return {"active": len(self.active), "waiting": len(self.waiting), "free_rows": self.rows.free}

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
                        if not self.waiting or self.rows.free < self.waiting[0].rows_needed:
                            break
                        job = self.waiting.popleft()
                    self._guarded([job], self._prefill, job)
                    admitted += max(job.generation.prefilled_tokens - job.cached_tokens, 1)
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
        row, reused = self.rows.allocate(ids)
        job.cached_tokens = reused
        where = torch.tensor([row], device=self.model.device)
        logits = torch.empty(0)
        start = reused
        try:
            while start < len(ids):
                stop = min(start + PREFILL_CHUNK, len(ids))
                piece = torch.tensor([ids[start:stop]], device=self.model.device)
                logits = self.model(piece, start, last_only=True, rows=where)[0, -1].float().cpu()
                start = stop
        except BaseException:
            self.rows.release(row, ids[:reused])
            raise
        self.rows.hold(row, ids)
        others = [self.rows.allocate(())[0] for _ in range(n - 1)]
        if others:
            self.rows.copy(row, others, len(ids))
        job.sink(("prefilled", reused))
        for i, (r, state) in enumerate(zip([row, *others], generation.sample_states())):
            seq = Seq(job, i, r, state, list(ids), len(ids))
            self.active.append(seq)
            self._advance(seq, logits)

    def _decode(self) -> None:
        seqs = list(self.active)
        device = self.model.device
        tokens = torch.tensor([[s.next_token] for s in seqs], device=device)  # (B, 1)
        rows = torch.tensor([s.row for s in seqs], device=device)
        positions = torch.tensor([s.written for s in seqs], device=device)
        logits = self.model(tokens, rows=rows, positions=positions, last_only=True)[:, -1].float().cpu()  # (B, vocab)
        self.steps += 1
        for seq, row_logits in zip(seqs, logits):
            seq.written += 1
            self._advance(seq, row_logits)

    def _advance(self, seq: Seq, logits: torch.Tensor) -> None:
        generation = seq.job.generation
        token, events = generation.advance(seq.index, logits, seq.state)
        for event in events:
            seq.job.sink(("token", seq.index, event))
        if generation.results[seq.index].stop_reason is not None:
            self._finish(seq)
            seq.job.sink(("done", seq.index))
        else:
            seq.tokens.append(token)
            seq.next_token = token

    def _finish(self, seq: Seq) -> None:
        if seq.done:
            return
        seq.done = True
        self.active.remove(seq)
        self.rows.release(seq.row, seq.tokens[: seq.written])
        seq.job.open -= 1
