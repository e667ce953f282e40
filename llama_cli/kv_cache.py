"""The KV cache and its one owner: allocate, grow, copy rows, and know which tokens each row holds.

A `KVCache` is the decoding state of one model: per-layer key/value buffers of `batch` rows by
`length` positions (model.LayerCache), the rotary tables for those positions, and, for every row,
the token ids whose keys and values fill it from position 0 (`held`). Every write goes through
`run`, which records what it wrote, so the valid prefix of a row is known exactly and never
guessed: `llama chat` reuses the longest common prefix of its re-rendered conversation with row 0,
the server (serve/scheduler.py) picks, for each new request, the free row that holds the longest
prefix of its prompt (`acquire`).

Each user owns its own cache: a `Generation` makes one unless given one, a chat session keeps one
for its whole conversation, the server keeps one with `--parallel` rows, perplexity one per call.
Nothing else writes into the buffers. The cache-free mode (training, scoring whole sequences) is
`model(tokens, cache=None)`: nothing is stored.

References: pytorch-labs/gpt-fast (a preallocated cache addressed by explicit positions); vLLM's
and llama.cpp's prefix reuse (a sequence's cached tokens matched against a new prompt).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .memory import check_fits
from .model import LayerCache, Transformer, rope_tables


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class KVCache:
    """Keys and values for `batch` sequences of up to `length` positions; empty until `ensure`."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.batch = 0  # rows
        self.length = 0  # positions per row
        self.layers: list[LayerCache] = []  # one per transformer layer, read by Transformer.forward
        self.rope_cos = self.rope_sin = torch.empty(0)  # (length, head_dim) rotary tables for positions 0..length-1
        self.held: list[list[int]] = []  # row r's keys/values are those of held[r] at positions 0..len-1
        self.busy: list[bool] = []  # rows handed out by `acquire` and not yet released
        self.used_at: list[float] = []  # when each row was last released (least recently used goes first)

    # -- size

    def ensure(self, batch: int, length: int) -> None:
        """At least `batch` rows of `length` positions. A bigger cache keeps every row's tokens (the
        grown rows copy their held prefix), so a conversation outgrowing its cache prefills nothing again."""
        if batch <= self.batch and length <= self.length:
            return
        context = self.model.config.context_length
        if length > context:
            raise ValueError(f"a cache of {length} positions exceeds the model's context length {context}")
        batch, length = max(batch, self.batch), max(length, self.length)
        weight = self.model.norm.weight  # the activations' dtype: float32 when the linear layers are quantized
        config = self.model.config
        per_row = config.n_layers * 2 * config.n_kv_heads * length * config.head_dim * weight.element_size()
        check_fits(
            f"a KV cache of {batch:,} sequences x {length:,} positions", batch * per_row, per_unit=per_row, unit="sequences",
            device_type=weight.device.type, index=weight.device.index,
        )  # fmt: skip
        old = self.layers
        self.layers = [
            LayerCache(batch, config.n_kv_heads, length, config.head_dim, dtype=weight.dtype, device=weight.device)
            for _ in range(config.n_layers)
        ]
        for new, previous in zip(self.layers, old):  # carry every row's valid prefix into the bigger buffers
            for row, ids in enumerate(self.held):
                if ids:
                    new.k[row, :, : len(ids)] = previous.k[row, :, : len(ids)]
                    new.v[row, :, : len(ids)] = previous.v[row, :, : len(ids)]
        if length != self.length:
            self.rope_cos, self.rope_sin = rope_tables(config, length, weight.device)
        grown = batch - self.batch
        self.batch, self.length = batch, length
        self.held += [[] for _ in range(grown)]
        self.busy += [False] * grown
        self.used_at += [0.0] * grown

    # -- writing

    def run(
        self,
        tokens: Sequence[Sequence[int]],
        start: int = 0,
        *,
        rows: Sequence[int] | None = None,
        positions: Sequence[int] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Run tokens[b] through the model at positions start.. of row rows[b] (default: row b),
        writing their keys and values here; the logits (B, T, vocab) in float32 (B, 1, vocab with `last_only`).

        With `positions`, row b's single token goes at positions[b] instead (continuous batching).
        A row must already hold every position before the ones written (the cache never guesses):
        what it held from the first written position on is forgotten before the pass starts, so
        a pass cut short (Ctrl-C) leaves only valid entries behind.
        """
        targets = list(range(len(tokens))) if rows is None else list(rows)
        starts = [start] * len(tokens) if positions is None else list(positions)
        for row, at in zip(targets, starts):
            if at > len(self.held[row]):
                raise ValueError(f"row {row} holds {len(self.held[row])} positions; cannot write at position {at}")
            del self.held[row][at:]
        device = self.model.device
        where = {} if rows is None and positions is None else {"rows": torch.tensor(targets, device=device)}
        if positions is not None:
            where["positions"] = torch.tensor(starts, device=device)
        logits = self.model(torch.tensor([list(t) for t in tokens], device=device), start, cache=self, last_only=last_only, **where)
        for row, ids in zip(targets, tokens):
            self.held[row].extend(ids)
        return logits

    def copy_row(self, source: int, targets: Sequence[int], length: int) -> None:
        """Rows `targets` take row `source`'s first `length` positions (one prefill, many samples)."""
        if length > len(self.held[source]):
            raise ValueError(f"row {source} holds {len(self.held[source])} positions, not {length}")
        targets = list(targets)
        for layer in self.layers:
            layer.k[targets, :, :length] = layer.k[source, :, :length]
            layer.v[targets, :, :length] = layer.v[source, :, :length]
        for target in targets:
            self.held[target] = self.held[source][:length]

    # -- reuse

    def reusable(self, row: int, ids: Sequence[int]) -> int:
        """How many leading `ids` row `row` already holds, leaving at least one to run (its logits are needed)."""
        if row >= self.batch:
            return 0
        return min(common_prefix(ids, self.held[row]), max(len(ids) - 1, 0))

    # -- many sequences (the server)

    @property
    def free(self) -> int:
        return self.busy.count(False)

    def acquire(self, ids: Sequence[int]) -> tuple[int, int]:
        """A free row for a prompt, preferring the longest held prefix of `ids` (then the least recently
        used); returns (row, how many leading ids it already holds, at most len(ids) - 1).

        When a row in use holds a longer prefix (requests that share a system prompt, arriving
        together), that prefix is copied into the free row instead of being prefilled again.
        """
        free = [r for r in range(self.batch) if not self.busy[r]]
        if not free:
            raise RuntimeError("no free KV-cache row")
        best = max(free, key=lambda r: (common_prefix(ids, self.held[r]), -self.used_at[r]))
        self.busy[best] = True
        held = self.reusable(best, ids)
        source = max(range(self.batch), key=lambda r: self.reusable(r, ids))
        if (shared := self.reusable(source, ids)) > held:
            self.copy_row(source, [best], shared)
            held = shared
        return best, held

    def release(self, row: int) -> None:
        """The row is free again; what it holds stays for reuse."""
        self.busy[row] = False
        self.used_at[row] = time.monotonic()
