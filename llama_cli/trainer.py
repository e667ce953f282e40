"""The training loop shared by `llama train` and `llama finetune`, on one process or under torchrun.

What it does, nanoGPT/LitGPT style: AdamW (weight decay on matrices only) with linear warmup and
cosine decay to `min_lr`, gradient accumulation, gradient clipping, bfloat16 autocast where asked
(the default on CUDA), periodic validation loss, `metrics.jsonl`, and checkpoints that `resume`
continues exactly: batches are a pure function of (seed, rank, step), so the weights being
trained, the optimizer state and the step number are all the state there is.

Under torchrun the model is replicated (DDP) or sharded (FSDP), as distributed.py sets up; each
rank draws batches from its own shard (the task's job), losses are averaged over ranks, and rank
0 alone writes files and prints progress.

Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and stops; a second
Ctrl-C at least 3 s later stops at once without saving. Not done here: master weights in anything
but the model's own dtype (float32 for every model `llama` trains).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import Dist, full_state, gradient_sync, load_optimizer_state, optimizer_state, wrap
from .errors import UsageError, literal
from .textio import read_json_object
from .train_settings import LoopSettings as LoopSettings  # noqa: PLC0414 (re-exported: defined torch-free in train_settings.py)

STATE_FILE = "train_state.pt"  # weights being trained, optimizer state, step: what --resume reads
METRICS_FILE = "metrics.jsonl"
IGNORE = -100  # target id that carries no loss (padding, prompt tokens in fine-tuning)


def lr_at(step: int, s: LoopSettings) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup, then cosine to min_lr."""
    if step <= s.warmup:
        return s.lr * step / s.warmup
    progress = min(1.0, (step - s.warmup) / max(1, s.max_steps - s.warmup))
    return s.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (s.lr - s.min_lr)


class Task(Protocol):
    """What a kind of training supplies to the loop."""

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets), each (B, T), for a micro-step; targets use IGNORE for no loss."""
        ...

    def val_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the held-out set, the same at every evaluation."""
        ...

    def write_outputs(self, weights: dict[str, torch.Tensor], out: Path) -> None:
        """Write what the run leaves behind (a model folder, an adapter) from the model's whole
        state dict (CPU tensors, parameter names); called on rank 0 at each save."""
        ...


# ---------------------------------------------------------------- stopping, checkpoints, metrics


class StopFlag:
    """SIGINT/SIGTERM -> finish this step, save, stop; a second SIGINT >= 3 s later -> KeyboardInterrupt.

    The grace period matters under torchrun: the launcher forwards the terminal's Ctrl-C to the
    workers, which then see it twice within milliseconds."""

    def __init__(self, *, announce: bool) -> None:
        self.requested_at: float | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested_at is not None and signum == signal.SIGINT and time.monotonic() - self.requested_at >= 3:
            raise KeyboardInterrupt
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            if self.announce:
                print(
                    "\nllama: stopping after this step to save a checkpoint (Ctrl-C again to quit without one)", file=sys.stderr, flush=True
                )

    def __enter__(self) -> StopFlag:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def save_state(
    out: Path, step: int, trainable: dict[str, torch.Tensor], optimizer: dict[str, Any], settings: LoopSettings, extra: dict[str, Any]
) -> None:
    """train_state.pt, written beside and renamed into place (a crash never leaves half a file)."""
    state = {"step": step, "trainable": trainable, "optimizer": optimizer, "settings": settings.to_dict(), "extra": extra}
    temporary = out / (STATE_FILE + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, out / STATE_FILE)


def saved_settings(out: Path, filename: str, run: str) -> dict[str, Any]:
    """The settings a run recorded in `out/filename` (train.json, finetune.json), for --resume."""
    path = out / filename
    if not path.is_file():
        raise UsageError.naming(f"{{resume}}: {literal(out)} holds no {run} run ({literal(filename)} is missing)")
    settings = read_json_object(path, error=UsageError).get("settings")
    if not isinstance(settings, dict):
        raise UsageError.naming(f"{{resume}}: {literal(path)} holds no settings (a damaged file?); start the run again in another {{out}}")
    return settings


def load_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.is_file():
        raise UsageError.naming(f"{{resume}}: {literal(out)} holds no checkpoint ({STATE_FILE}); start without {{resume}}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (a truncated or foreign file: torch raises many kinds)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError.naming(f"{{resume}}: cannot read {literal(path)}: {literal(first)}") from None


def check_resumable(saved: LoopSettings, now: LoopSettings) -> None:
    """Refuse a resume whose settings would change the loss curve (max_steps and intervals may change)."""
    changed = [
        f"{{{f.name}}} {literal(getattr(now, f.name))} (checkpoint: {literal(getattr(saved, f.name))})"
        for f in fields(LoopSettings) if f.name not in LoopSettings.CHANGEABLE and getattr(saved, f.name) != getattr(now, f.name)
    ]  # fmt: skip
    if changed:
        raise UsageError.naming(f"{{resume}} with different settings: {'; '.join(changed)}; drop them to continue the run as it was")


def rewrite_metrics(out: Path, up_to: int) -> None:
    """Keep the metrics of steps <= up_to (a resumed run logs the later ones again)."""
    path = out / METRICS_FILE
    if path.is_file():
        kept = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if _step_of(line) <= up_to]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _step_of(line: str) -> float:
    """A metrics line's step; a damaged line (a run killed mid-write) counts as past every step, so it is dropped."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return math.inf
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else math.inf


# ---------------------------------------------------------------- progress


class Progress:
    """Rank 0's progress: a rich bar (loss, tokens/s, ETA) on a terminal, plain lines otherwise."""

    def __init__(self, total: int, start: int, *, enabled: bool, label: str) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.began = time.monotonic()
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn())
            self.bar = RichProgress(*columns, console=Console(stderr=True))
            self.task = self.bar.add_task(label, total=total, completed=start, status="")
            self.bar.start()

    def update(self, step: int, record: dict[str, Any] | None, loss: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            status = f"loss {loss:.4f}" + (f"  {record['tokens_per_s']:,.0f} tok/s" if record else "")
            self.bar.update(self.task, completed=step, status=status)
            if record and record["val_loss"] is not None:
                self.bar.console.print(describe(record), highlight=False)
        elif record is not None:
            done = step - self.start
            eta = (time.monotonic() - self.began) / done * (self.total - step) if done else 0.0
            print(f"{describe(record)}  ETA {format_seconds(eta)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def describe(record: dict[str, Any]) -> str:
    text = f"step {record['step']}  loss {record['train_loss']:.4f}"
    if record["val_loss"] is not None:
        text += f"  val {record['val_loss']:.4f} (ppl {math.exp(min(record['val_loss'], 50)):.1f})"
    return text + f"  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s"


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


# ---------------------------------------------------------------- the loop


@dataclass
class LoopResult:
    step: int  # last completed step
    interrupted: bool
    last_val_loss: float | None
    already_done: bool = False  # resumed at or past max_steps: nothing was trained (the CLI says so)


def autocast_for(settings: LoopSettings, device: torch.device) -> Any:
    bf16 = settings.precision == "bfloat16" or (settings.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def token_loss(logits: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE, reduction=reduction)


def evaluate(model: nn.Module, task: Task, dist: Dist, settings: LoopSettings) -> float:
    """Mean loss per target token over the held-out set (all ranks' shares together)."""
    batches = list(task.val_batches())
    rounds = dist.most(len(batches)) if dist.sharded else len(batches)  # sharded: every rank runs every forward
    idle = (torch.zeros(1, 1, dtype=torch.int64), torch.full((1, 1), IGNORE))  # a forward that counts for nothing
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast_for(settings, dist.device):
        for i in range(rounds):
            x, y = (t.to(dist.device) for t in (batches[i] if i < len(batches) else idle))
            total += float(token_loss(model(x, cache=None), y, reduction="sum"))
            count += int((y != IGNORE).sum())
    model.train()
    total, count = dist.sum([total, float(count)])
    return total / max(count, 1)


def make_optimizer(model: nn.Module, settings: LoopSettings) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": settings.weight_decay},  # matrices, embeddings
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},  # norms
    ]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2), eps=1e-8)


def run_loop(
    model: nn.Module,
    task: Task,
    settings: LoopSettings,
    out: Path,
    dist: Dist,
    *,
    resume: bool,
    label: str = "training",
    extra: dict[str, Any] | None = None,
) -> LoopResult:
    """Train `model` (on dist.device, parameters to train marked requires_grad) until settings.max_steps.

    With `resume`, weights, optimizer and step come from out/train_state.pt. Returns the last
    step done; `interrupted` when a signal stopped it early (a checkpoint was saved first).
    """
    extra = dict(extra or {})
    start, state = 0, None
    if resume:
        state = load_state(out)
        check_resumable(LoopSettings.from_dict(state["settings"]), settings)
        if state.get("extra", {}).get("data") != extra.get("data"):
            raise UsageError.naming("{resume}: the training data differ from the checkpoint's; give the same files to continue the run")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                params[name].copy_(tensor)
        start = int(state["step"])
    trained = wrap(model, dist)  # the same module as `model` unless replicated by DDP
    optimizer = make_optimizer(model, settings)
    if state is not None:
        load_optimizer_state(model, optimizer, state["optimizer"], dist)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        rewrite_metrics(out, start) if resume else (out / METRICS_FILE).write_text("", encoding="utf-8")
    if start >= settings.max_steps:
        return LoopResult(start, False, None, already_done=True)

    trained.train()
    progress = Progress(settings.max_steps, start, enabled=dist.main, label=label)
    params = [p for p in model.parameters() if p.requires_grad]
    window_tokens, window_start = 0, time.monotonic()
    last_val: float | None = None
    step = start
    try:
        with StopFlag(announce=dist.main) as stop:
            for step in range(start + 1, settings.max_steps + 1):
                lr = lr_at(step, settings)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for micro in range(settings.grad_accum):
                    x, y = (t.to(dist.device) for t in task.batch(step, micro))
                    with gradient_sync(trained, dist, sync=micro == settings.grad_accum - 1):
                        with autocast_for(settings, dist.device):
                            loss = token_loss(trained(x, cache=None), y)
                        (loss / settings.grad_accum).backward()
                    loss_sum += float(loss.detach())
                    window_tokens += x.numel() * dist.world
                if settings.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                train_loss, stops = dist.sum([loss_sum / settings.grad_accum, float(stop.requested_at is not None)])
                train_loss /= dist.world
                # Evaluation and logging depend on the step alone, so an interrupted and resumed
                # run writes the same metrics as an uninterrupted one.
                val_loss = evaluate(model, task, dist, settings) if step % settings.eval_every == 0 or step == settings.max_steps else None
                record = None
                if val_loss is not None or step % settings.log_every == 0:
                    last_val = val_loss if val_loss is not None else last_val
                    elapsed = time.monotonic() - window_start
                    record = {
                        "step": step,
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "lr": lr,
                        "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                    }
                    window_tokens, window_start = 0, time.monotonic()
                    if dist.main:
                        with (out / METRICS_FILE).open("a", encoding="utf-8") as file:
                            file.write(json.dumps(record) + "\n")
                progress.update(step, record, train_loss)
                if stops or step % settings.save_every == 0 or step == settings.max_steps:
                    _save(model, optimizer, settings, out, dist, task, step, extra)
                if stops and step < settings.max_steps:
                    return LoopResult(step, True, last_val)
        return LoopResult(step, False, last_val)
    finally:
        progress.close()


def _save(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: LoopSettings,
    out: Path,
    dist: Dist,
    task: Task,
    step: int,
    extra: dict[str, Any],
) -> None:
    weights = full_state(model, dist)  # under FSDP these two gather from every rank
    optim = optimizer_state(model, optimizer, dist)
    if dist.main:
        task.write_outputs(weights, out)
        trainable = {name: weights[name] for name, p in model.named_parameters() if p.requires_grad}
        save_state(out, step, trainable, optim, settings, extra)
    dist.barrier()
