"""`llama finetune`: teach a model from chat examples, with LoRA adapters (default) or all weights.

    settings = FinetuneSettings(data="examples.jsonl", out=Path("my-adapter"))
    finetune(settings)            # then: llama generate --chat --adapter my-adapter "..."

Data is JSONL, one example per line: `{"messages": [{"role": "user", "content": ...}, ...]}` or
`{"prompt": ..., "completion": ...}` (optionally with "system"). Each is rendered through the base
model's chat template exactly as `llama chat` renders a conversation, and the loss counts only the
assistant's tokens (its reply and the end-of-turn token that closes it).

LoRA runs leave `adapter.json` + `adapter.safetensors` (lora.py); `--merge` also writes the
merged model as a native folder beside them; `--full` leaves a native model folder. The training
loop (validation, metrics.jsonl, resume, Ctrl-C, torchrun) is trainer.py's. GGUF weights are
dequantized to float32 for training.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .chat_template import Message, render_prompt, template_text
from .data import DataError, fingerprint, jsonl_records
from .distributed import Dist, close_distributed, full_state, init_distributed
from .errors import UsageError, literal
from .lora import ADAPTER_CONFIG, Adapter, LoRAConfig, add_lora, save_adapter
from .settings import SettingsError
from .textio import read_json_object
from .tokenizer import Tokenizer
from .train_settings import DEFAULT_LOOP, FULL_LOOP, LoopSettings
from .trainer import IGNORE, STATE_FILE, LoopResult, check_resumable, run_loop, saved_settings

ROLES = ("system", "user", "assistant")
FINETUNE_FILE = "finetune.json"


@dataclass(frozen=True)
class Example:
    source: str  # "data.jsonl line 7"
    inputs: list[int]  # tokens 0..n-2
    targets: list[int]  # tokens 1..n-1, IGNORE where the model is not taught (prompt, system, template)


def read_conversations(path: str | Path) -> list[tuple[int, list[Message]]]:
    """(line number, messages) for every example in a JSONL file; the first bad line is an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    examples = []
    for number, record in jsonl_records(path):
        where = f"{path} line {number}"
        if "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
            for k, m in enumerate(messages):
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    raise DataError(
                        f'{where}: message {k + 1} must be {{"role": system|user|assistant, "content": text}}, got {json.dumps(m)[:80]}'
                    )
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
            messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
            if isinstance(record.get("system"), str):
                messages.insert(0, {"role": "system", "content": record["system"]})
        else:
            raise DataError(
                f'{where}: expected "messages" (a list of {{"role", "content"}}) or "prompt" and "completion" strings (keys: '
                f"{', '.join(sorted(record)) or 'none'})"
            )
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            raise DataError(f"{where}: no assistant message with content: there is nothing to learn from it")
        examples.append((number, messages))
    if not examples:
        raise DataError(f"{path} has no examples (every line is blank)")
    return examples


def encode_conversation(messages: list[Message], tokenizer: Tokenizer, template: str, source: str) -> Example:
    """Token ids of the whole conversation, with targets only on the assistant turns.

    Each assistant turn's span is found by rendering the conversation up to it twice: with the
    generation prompt (where the reply starts) and with the reply (where it ends). Where a token
    straddles such a boundary, it counts as part of the reply."""

    def encode(upto: int, *, prompt: bool) -> list[int]:
        text = render_prompt(tokenizer, template, messages[:upto], add_generation_prompt=prompt)
        return tokenizer.encode(text, bos=False, parse_special=True)

    def common(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    ids = encode(len(messages), prompt=False)
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not message["content"]:
            continue
        before, through = encode(i, prompt=True), encode(i + 1, prompt=False)
        start = common(before, ids)
        end = common(through, ids) + (0 if ids[: len(through)] == through else 1)
        if end <= start:
            raise DataError(f"{source}: cannot find assistant message {i + 1} in the conversation as the chat template renders it")
        labels[start:end] = ids[start:end]
    return Example(source, ids[:-1], labels[1:])


@dataclass
class FinetuneSettings:
    data: str
    out: Path
    model: str | None = None  # base model: path or known name (None: the default model)
    full: bool = False
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    val: str | None = None  # a separate held-out JSONL; else val_fraction of the data
    val_fraction: float = 0.1
    max_len: int | None = None  # longest example in tokens (None: the model's context)
    template: str = "auto"
    merge: bool = False
    loop: LoopSettings = None  # type: ignore[assignment]  # None: DEFAULT_LOOP, or FULL_LOOP with `full`

    def __post_init__(self) -> None:
        if self.loop is None:
            self.loop = LoopSettings.from_dict(FULL_LOOP if self.full else DEFAULT_LOOP)
        if self.max_len is not None and self.max_len < 2:
            raise SettingsError(f"{{max_len}} must be at least 2 tokens (omit it for the model's context), got {self.max_len}")


def resolve(cli: dict[str, Any], loop_cli: dict[str, Any], out: Path, *, resume: bool) -> FinetuneSettings:
    """Settings from the command line (None = not given), over the saved run's (on resume), over the defaults."""
    saved = saved_settings(out, FINETUNE_FILE, "fine-tuning") if resume else {}
    given = {k: v for k, v in cli.items() if v is not None}
    lora_given = {k: given.pop(k) for k in ("rank", "alpha", "targets") if k in given}
    merged = {**{k: v for k, v in saved.items() if k not in ("loop", "out", "lora")}, **given}
    if not merged.get("data"):
        raise UsageError("no training data: give a JSONL file of examples")
    lora = {**saved.get("lora", {}), **lora_given}
    full = bool(merged.get("full"))
    loop = {**(FULL_LOOP if full else DEFAULT_LOOP), **saved.get("loop", {}), **{k: v for k, v in loop_cli.items() if v is not None}}
    changed = [k for k, v in lora_given.items() if k in saved.get("lora", {}) and (list(v) if k == "targets" else v) != saved["lora"][k]]
    if changed or (resume and "full" in given and given["full"] != saved.get("full")):
        raise UsageError.naming("{resume} cannot change {full} or the LoRA {rank}, {alpha} or {targets} of the run")
    lora_config = LoRAConfig(**{**lora, "targets": tuple(lora.get("targets", LoRAConfig().targets))})
    if resume and isinstance(saved.get("loop"), dict):  # refused now, before finetune.json is rewritten with the new values
        check_resumable(LoopSettings.from_dict(saved["loop"]), LoopSettings.from_dict(loop))
    return FinetuneSettings(out=out, lora=lora_config, loop=LoopSettings.from_dict(loop), **merged)


def prepare_examples(
    conversations: list[tuple[int, list[Message]]], path: str, tokenizer: Tokenizer, template: str, max_len: int, context: int
) -> list[Example]:
    examples = [encode_conversation(m, tokenizer, template, f"{path} line {n}") for n, m in conversations]
    too_long = [e for e in examples if len(e.inputs) > max_len]
    if too_long:
        worst = max(too_long, key=lambda e: len(e.inputs))
        raise DataError.naming(
            f"{literal(worst.source)}: {len(worst.inputs) + 1} tokens, longer than {max_len} (the model's context is {context}; "
            f"{len(too_long)} example(s) too long in all); shorten them or raise {{max_len}}"
        )
    return examples


class FinetuneTask:
    """Shuffled examples, each rank taking its own of every global batch; right-padded batches."""

    def __init__(self, train: list[Example], val: list[Example], loop: LoopSettings, dist: Dist, pad_id: int, save: Any) -> None:
        self.train, self.loop, self.rank, self.world, self.pad_id, self._save = train, loop, dist.rank, dist.world, pad_id, save
        self.val = val[dist.rank :: dist.world]
        self._orders: dict[int, list[int]] = {}

    def _collate(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(e.inputs) for e in examples)
        x = torch.full((len(examples), width), self.pad_id, dtype=torch.int64)
        y = torch.full((len(examples), width), IGNORE, dtype=torch.int64)
        for row, e in enumerate(examples):
            x[row, : len(e.inputs)] = torch.tensor(e.inputs)
            y[row, : len(e.targets)] = torch.tensor(e.targets)
        return x, y

    def _order(self, epoch: int) -> list[int]:
        """The training examples' order in an epoch: a permutation seeded by (seed, epoch)."""
        if epoch not in self._orders:
            self._orders = {
                epoch: torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.loop.seed + epoch)).tolist()
            }
        return self._orders[epoch]

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.loop.batch_size
        first = ((step - 1) * self.loop.grad_accum + micro) * b * self.world + self.rank * b  # global example counter
        return self._collate([self.train[self._order(k // len(self.train))[k % len(self.train)]] for k in range(first, first + b)])

    def val_batches(self):  # type: ignore[no-untyped-def]
        for i in range(0, len(self.val), self.loop.batch_size):
            yield self._collate(self.val[i : i + self.loop.batch_size])

    def write_outputs(self, weights: dict[str, torch.Tensor], out: Path) -> None:
        self._save(weights, out)


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if len(examples) < 2:
        raise DataError.naming("need at least 2 examples: one or more to train on and one held out (or give {val} FILE)")
    if not 0 < fraction < 1:
        raise UsageError.naming(f"{{val_fraction}} must be between 0 and 1, got {fraction}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def finetune(settings: FinetuneSettings, *, resume: bool = False, device: str = "auto", fsdp: bool = False) -> LoopResult:
    """Fine-tune as `settings` say (or continue a run with `resume`); see the module docstring.

    Under torchrun, `fsdp` shards the model over the ranks instead of replicating it."""
    from .api import build_model
    from .registry import resolve_model
    from .weights import load_checkpoint, save_native

    out = settings.out
    if not resume and ((out / STATE_FILE).exists() or (out / ADAPTER_CONFIG).exists() or (out / "llama.json").exists()):
        raise UsageError.naming(
            f"{literal(out)} already holds a fine-tuning run or model; continue it with {{resume}}, or choose another {{out}}"
        )
    if out.exists() and not out.is_dir():
        raise UsageError.naming(f"{{out}} {literal(out)} is a file; give a folder")
    conversations = read_conversations(settings.data)  # bad data fails before the model loads
    held_out = read_conversations(settings.val) if settings.val else None
    dist = init_distributed(device, fsdp=fsdp)
    try:
        base_path = resolve_model(settings.model)
        checkpoint = load_checkpoint(base_path)
        config, tokenizer = checkpoint.config, checkpoint.tokenizer
        max_len = settings.max_len or config.context_length
        if max_len > config.context_length:
            raise UsageError.naming(f"{{max_len}} {max_len} is longer than the model's context ({config.context_length} tokens)")
        template = template_text(checkpoint.chat_template, settings.template)
        examples = prepare_examples(conversations, settings.data, tokenizer, template, max_len, config.context_length)
        if held_out is not None:
            train, val = examples, prepare_examples(held_out, str(settings.val), tokenizer, template, max_len, config.context_length)
        else:
            train, val = split_examples(examples, settings.val_fraction, settings.loop.seed)
        model = build_model(checkpoint, torch.float32, dist.device)
        if settings.full:
            for p in model.parameters():  # own copies: checkpoint tensors may be read-only memory maps
                p.data = p.data.clone()
                p.requires_grad_(True)
        else:
            add_lora(model, settings.lora, seed=settings.loop.seed)

        def save(weights: dict[str, torch.Tensor], folder: Path) -> None:
            if settings.full:
                save_native(folder, config, {k: v.float() for k, v in weights.items()}, tokenizer, checkpoint.chat_template)
            else:
                save_adapter(folder, weights, settings.lora, base_config=config, base_model=str(base_path))

        pad = tokenizer.special.eos_id if tokenizer.special.eos_id is not None else 0
        task = FinetuneTask(train, val, settings.loop, dist, pad, save)
        data_key = fingerprint(torch.tensor([t for e in train + val for t in (*e.inputs, *e.targets)], dtype=torch.int64))
        if resume and read_json_object(out / FINETUNE_FILE, error=UsageError).get("data") != data_key:
            raise UsageError.naming("{resume}: the examples differ from the run's; give the same files (or none, to reuse the run's)")
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
            summary = {"settings": record, "base_model": str(base_path), "data": data_key}
            (out / FINETUNE_FILE).write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
            taught = sum(sum(t != IGNORE for t in e.targets) for e in train)
            print(
                f"llama: {len(train)} training examples ({taught:,} assistant tokens), {len(val)} held out; "
                f"{'all' if settings.full else 'LoRA'} {trainable / 1e6:.2f}M trainable parameters of {config.n_params / 1e6:.2f}M",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        result = run_loop(
            model, task, settings.loop, out, dist, resume=resume, label="llama finetune", extra={"data": data_key, "base": str(base_path)}
        )
        if settings.merge and not settings.full and not result.interrupted:
            weights = full_state(model, dist)  # every rank takes part under FSDP
            if dist.main:
                lora = {k: v for k, v in weights.items() if k.endswith((".lora_a", ".lora_b"))}
                base = {k: v.float() for k, v in weights.items() if k not in lora}
                merged = Adapter(settings.lora, lora).merged(base)
                save_native(
                    out, config, merged, tokenizer, checkpoint.chat_template, origin={"base_model": str(base_path), "adapter": str(out)}
                )
        return result
    finally:
        close_distributed()
