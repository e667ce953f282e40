"""`llama train`, `llama finetune` and `llama merge`: thin commands over train.py, finetune.py and lora.py.

Options left out mean "the preset's" (train) or "the default" (finetune), and on --resume "the
run's own": a resumed run continues with exactly the settings it was started with. Under torchrun
every rank runs the same command; only rank 0 prints.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ..train_settings import DEFAULT_LOOP, FULL_LOOP, PRESETS, LoopSettings, PretrainSettings
from .bundles import Bundle, bundled, option
from .errors import handles_errors
from .options import ModelOpt, NoCacheOpt, ThreadsOpt, check_device, check_template, choice, flag, value

MODEL_SHAPE_PANEL, DATA_PANEL, LORA_PANEL = "Model shape", "Data", "LoRA"
TrainPreset = Enum("TrainPreset", {name: name for name in PRESETS}, type=str)  # type: ignore[misc]
TokenizerType = Enum("TokenizerType", {name: name for name in ("bpe", "unigram")}, type=str)  # type: ignore[misc]


def _setting_default(settings: type, field: str) -> str:
    return str(settings.__dataclass_fields__[field].default)


def _preset_default(field: str) -> str:
    """A training default as `--help` shows it: the one value, or each preset's ("tiny 300, small 5000, ...")."""
    values = [
        getattr(p, field) if hasattr(p, field) else p.loop.get(field, _setting_default(LoopSettings, field)) for p in PRESETS.values()
    ]
    if len(set(map(str, values))) == 1:
        return str(values[0])
    return ", ".join(f"{name} {v}" for name, v in zip(PRESETS, values))


def _finetune_default(field: str) -> str:
    lora, full = DEFAULT_LOOP.get(field, _setting_default(LoopSettings, field)), FULL_LOOP.get(field, _setting_default(LoopSettings, field))
    return str(lora) if lora == full else f"{lora}, with --full {full}"


def _shape(name: str, field: str, help: str, panel: str = MODEL_SHAPE_PANEL) -> Any:
    return Annotated[int | None, value(name, help=help, panel=panel, show_default=_preset_default(field))]


OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created).", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint, with its own settings.")]


def _val_fraction(default: str) -> Any:
    return Annotated[
        float | None, value("--val-fraction", help="Share of the data held out for validation.", panel=DATA_PANEL, show_default=default)
    ]


LOOP_PANEL = "Training loop"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"


@dataclass(frozen=True)
class LoopOptions:
    """The loop settings given (None: the run's default, see train.py and finetune.py), and where to run."""

    loop: dict[str, Any]  # LoopSettings fields
    device: str
    fsdp: bool
    threads: int | None


def _loop(*, device: str, fsdp: bool, threads: int | None, **loop: Any) -> LoopOptions:
    return LoopOptions(loop, device, fsdp, threads)


def loop_bundle(default: Callable[[str], str]) -> Bundle:
    """The loop options, each showing `default(field)` as its default in the help (the options themselves default to None)."""

    def loop_value(field: str, help: str, kind: Any) -> inspect.Parameter:
        flag_name = "--" + field.replace("_", "-")
        if isinstance(kind, type) and issubclass(kind, Enum):
            return option(
                field, Annotated[str | None, choice(kind, flag_name, help=help, panel=LOOP_PANEL, show_default=default(field))], None
            )
        return option(field, Annotated[kind | None, value(flag_name, help=help, panel=LOOP_PANEL, show_default=default(field))], None)

    return Bundle(
        _loop,
        [
            loop_value("max_steps", "Optimizer steps in all (on --resume: raise it to train further).", int),
            loop_value("batch_size", "Sequences per micro-batch on each process.", int),
            loop_value("grad_accum", "Micro-batches per optimizer step.", int),
            loop_value("lr", "Peak learning rate (AdamW).", float),
            loop_value("min_lr", "Learning rate at the end of the cosine decay.", float),
            loop_value("warmup", "Steps of linear warmup.", int),
            loop_value("weight_decay", "AdamW weight decay (matrices only).", float),
            loop_value("grad_clip", "Clip the gradient norm to this (0 = off).", float),
            loop_value("seed", "Seed for initialisation, data order and the held-out split.", int),
            loop_value("precision", "bfloat16 autocast on CUDA with auto, float32 on CPU.", Precision),
            loop_value("eval_every", "Steps between validation losses.", int),
            loop_value("eval_batches", "Batches in each validation.", int),
            loop_value("log_every", "Steps between lines of metrics.jsonl.", int),
            loop_value("save_every", "Steps between checkpoints.", int),
            option(
                "device",
                Annotated[
                    str,
                    value(
                        "--device",
                        help="auto (CUDA when present, under torchrun the rank's GPU), cpu, cuda or cuda:N.",
                        panel=LOOP_PANEL,
                        callback=check_device,
                    ),
                ],
                "auto",
            ),
            option(
                "fsdp",
                Annotated[
                    bool,
                    flag(
                        "--fsdp",
                        help=(
                            "Under torchrun: shard the model, gradients and optimizer state over the processes (FSDP) instead of "
                            "replicating them (DDP)."
                        ),
                        panel=LOOP_PANEL,
                    ),
                ],
                False,
            ),
            option("threads", ThreadsOpt, None),
        ],
    )


def _setup(threads: int | None) -> bool:
    """Threads for this process; True on the process that prints (rank 0)."""
    from ..api import set_threads

    set_threads(threads)
    return os.environ.get("RANK", "0") == "0"


def _finish(result: Any, out: Path, main: bool, what: str, hint: str, max_steps: int) -> None:
    if not main:
        if result.interrupted:
            raise typer.Exit(130)
        return
    if result.already_done:
        print(
            f"llama: {out} is already at step {result.step} of --max-steps {max_steps}; raise --max-steps to train further", file=sys.stderr
        )
    if result.interrupted:
        print(
            f"llama: interrupted at step {result.step}: checkpoint saved in {out}; continue with: {what} -o {out} --resume", file=sys.stderr
        )
        raise typer.Exit(130)
    val = (
        f" (val loss {result.last_val_loss:.4f}, ppl {math.exp(min(result.last_val_loss, 50)):.1f})"
        if result.last_val_loss is not None
        else ""
    )
    print(f"llama: step {result.step} done{val}: {out}\nllama: try: {hint}", file=sys.stderr)


@handles_errors
@bundled(run=loop_bundle(_preset_default))
def train(
    *,
    data: Annotated[
        list[str] | None,
        typer.Argument(
            help=(
                'Text files, folders of them (.txt .md .rst .jsonl), or JSONL with a "text" field. On --resume: the run\'s own by default.'
            ),
            metavar="DATA",
            show_default=False,
        ),
    ] = None,
    out: OutOpt,
    preset: Annotated[
        str | None,
        choice(
            TrainPreset, "--preset", "-p", help="Model size and loop defaults.", show_default=_setting_default(PretrainSettings, "preset")
        ),
    ] = None,
    resume: ResumeOpt = False,
    dim: _shape("--dim", "dim", "Width of the residual stream.") = None,
    layers: _shape("--layers", "n_layers", "Transformer blocks.") = None,
    heads: _shape("--heads", "n_heads", "Attention heads.") = None,
    kv_heads: _shape("--kv-heads", "n_kv_heads", "Key/value heads (fewer than --heads: grouped-query attention).") = None,
    ctx: _shape("--ctx", "context_length", "Context length: the training sequence length.") = None,
    vocab_size: _shape("--vocab-size", "vocab_size", "Pieces of the sentencepiece tokenizer trained on the corpus.", DATA_PANEL) = None,
    tokenizer_type: Annotated[
        str | None,
        choice(
            TokenizerType,
            "--tokenizer-type",
            help="unigram has byte fallback too.",
            panel=DATA_PANEL,
            show_default=_setting_default(PretrainSettings, "tokenizer_kind"),
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        value(
            "--tokenizer",
            help="Reuse this tokenizer instead of training one: a tokenizer.model, a model folder, a GGUF or a known model name.",
            panel=DATA_PANEL,
            show_default=False,
        ),
    ] = None,
    val_fraction: _val_fraction(_setting_default(PretrainSettings, "val_fraction")) = None,
    run: LoopOptions,
) -> None:
    """Pretrain a model from scratch: train a tokenizer on the corpus, then the model; OUT loads in generate, chat and the presets.

    Writes OUT/llama.json, model.safetensors, tokenizer.model, metrics.jsonl (one JSON line per logged
    step), train.json and train_state.pt. Ctrl-C saves a checkpoint first; --resume continues it
    exactly. Under torchrun each process trains on its own shard of the data.

    [b]Examples[/b]

      llama train notes/ -o my-model --preset tiny --max-steps 300

      llama train corpus.jsonl -o my-model --preset small --vocab-size 8000

      llama train -o my-model --resume --max-steps 600

      torchrun --nproc_per_node 2 -m llama_cli train notes/ -o my-model

      torchrun --nproc_per_node 8 -m llama_cli train corpus/ -o big --preset large --fsdp
    """
    from ..train import pretrain, resolve

    main = _setup(run.threads)
    cli = {
        "data": data,
        "preset": preset,
        "dim": dim,
        "n_layers": layers,
        "n_heads": heads,
        "n_kv_heads": kv_heads,
        "context_length": ctx,
        "vocab_size": vocab_size,
        "tokenizer": tokenizer,
        "tokenizer_kind": tokenizer_type,
        "val_fraction": val_fraction,
    }
    settings = resolve(cli, run.loop, out, resume=resume)
    result = pretrain(settings, resume=resume, device=run.device, fsdp=run.fsdp)
    shape = out / "llama.json"
    context = json.loads(shape.read_text(encoding="utf-8"))["context_length"] if shape.exists() else 128
    hint = f'llama generate -m {out} -t 0.8 -n {min(100, context // 2)} "The"'  # -n within the context
    _finish(result, out, main, "llama train", hint, settings.loop.max_steps)


@handles_errors
@bundled(run=loop_bundle(_finetune_default))
def finetune(
    *,
    data: Annotated[
        str | None,
        typer.Argument(
            help='JSONL: {"messages": [...]} or {"prompt", "completion"} per line. On --resume: the run\'s own by default.',
            metavar="DATA",
            show_default=False,
        ),
    ] = None,
    out: OutOpt,
    model: ModelOpt = None,
    full: Annotated[bool, typer.Option("--full", help="Train every weight instead of LoRA adapters; OUT is then a whole model.")] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="After LoRA training, also write the merged model into OUT (a standalone model folder).")
    ] = False,
    resume: ResumeOpt = False,
    lora_rank: Annotated[
        int | None, typer.Option("--lora-rank", help="Rank of each adapter (default 8).", rich_help_panel=LORA_PANEL, show_default=False)
    ] = None,
    lora_alpha: Annotated[
        float | None,
        typer.Option(
            "--lora-alpha",
            help="Adapter scale numerator: updates are scaled by alpha/rank (default 16).",
            rich_help_panel=LORA_PANEL,
            show_default=False,
        ),
    ] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(
            "--lora-targets",
            help="Comma-separated layers to adapt (default all: wq,wk,wv,wo,w1,w2,w3).",
            rich_help_panel=LORA_PANEL,
            show_default=False,
        ),
    ] = None,
    val: Annotated[
        str | None,
        typer.Option("--val", help="Held-out examples (JSONL) instead of a share of DATA.", rich_help_panel=DATA_PANEL, show_default=False),
    ] = None,
    val_fraction: _val_fraction("0.1") = None,  # finetune.FinetuneSettings.val_fraction (finetune.py imports torch)
    max_len: Annotated[
        int | None,
        typer.Option(
            "--max-len",
            help="Longest example in tokens (default: the model's context); longer ones are an error.",
            rich_help_panel=DATA_PANEL,
            show_default=False,
        ),
    ] = None,
    template: Annotated[
        str | None,
        value(
            "--template",
            help="Chat template: auto (the model's own), chatml, llama3, llama2, or a Jinja file.",
            panel=DATA_PANEL,
            show_default="auto",
            callback=check_template,
        ),
    ] = None,
    run: LoopOptions,
) -> None:
    """Fine-tune a model on chat examples, with LoRA adapters by default; loss only on the assistant's tokens.

    Writes OUT/adapter.json + adapter.safetensors (use them with --adapter OUT in generate and chat),
    or with --full a whole model folder; metrics.jsonl and train_state.pt as llama train.

    [b]Examples[/b]

      llama finetune data/finetune_format.jsonl -o fmt-adapter --max-steps 60

      llama generate --chat --adapter fmt-adapter -t 0 "What is the capital of Peru?"

      llama finetune chats.jsonl -o merged --merge -m my-model
    """
    from ..finetune import finetune as run_finetune
    from ..finetune import resolve

    main = _setup(run.threads)
    targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip()) if lora_targets is not None else None
    cli = {
        "data": data,
        "model": model,
        "full": True if full else None,
        "merge": True if merge else None,
        "rank": lora_rank,
        "alpha": lora_alpha,
        "targets": targets,
        "val": val,
        "val_fraction": val_fraction,
        "max_len": max_len,
        "template": template,
    }
    settings = resolve(cli, run.loop, out, resume=resume)
    result = run_finetune(settings, resume=resume, device=run.device, fsdp=run.fsdp)
    use = (
        f"llama chat -m {out}"
        if settings.full or settings.merge
        else f"llama chat{' -m ' + settings.model if settings.model else ''} --adapter {out}"
    )
    _finish(result, out, main, "llama finetune", use, settings.loop.max_steps)


@handles_errors
def merge(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder written by llama finetune.", metavar="ADAPTER")],
    out: OutOpt = ...,  # type: ignore[assignment]
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model (default: the one the adapter was trained on).", show_default=False)
    ] = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model and write a standalone model folder.

    [b]Example[/b]

      llama merge fmt-adapter -o fmt-model && llama chat -m fmt-model
    """
    from ..lora import load_adapter
    from ..registry import resolve_model
    from ..weights import load_checkpoint, save_native
    from ..weights.quantized import dense

    loaded = load_adapter(adapter)
    if (out / "llama.json").exists():
        raise UsageError(f"{out} already holds a model; choose another --out")
    base = resolve_model(model or loaded.base_model)
    checkpoint = load_checkpoint(base, cache=not no_cache)
    loaded.check_base(checkpoint.config, base)
    weights = loaded.merged({name: dense(t).float() for name, t in checkpoint.weights.items()})
    save_native(
        out,
        checkpoint.config,
        weights,
        checkpoint.tokenizer,
        checkpoint.chat_template,
        origin={"base_model": str(base), "adapter": str(adapter)},
    )
    print(
        f"llama: wrote {out}: a standalone model, {base.name} with the adapter {adapter} merged in ({base} is unchanged)", file=sys.stderr
    )
