"""`llama train`: pretrain a LLaMA model from scratch on a text corpus, into a native model folder.

    settings = PretrainSettings(data=["books/"], out=Path("my-model"), preset="tiny")
    result = pretrain(settings)            # then: llama generate -m my-model "Once upon a time"

The output folder is what the native loader reads (weights/huggingface.py): llama.json,
model.safetensors (float32, internal names), tokenizer.model + tokenizer_special.json; beside
them metrics.jsonl, train.json (settings, corpus statistics, the unigram baseline) and
train_state.pt (what --resume continues from). The loop itself is trainer.py; the corpus,
tokenizer and batches are data.py.

References: karpathy/llama2.c (`train.py` model sizes, tied embeddings), karpathy/nanoGPT
(initialisation with residual projections scaled by 1/sqrt(2 * n_layers)), Meta's LLaMA
(SwiGLU width 8/3 * dim rounded up).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import data
from .config import ModelConfig
from .distributed import Dist, close_distributed, init_distributed
from .errors import UsageError, literal
from .memory import check_fits
from .model import Transformer
from .textio import read_json_object
from .tokenizer import Tokenizer
from .train_settings import PRESETS, LoopSettings, PretrainSettings, parameter_count, training_bytes
from .trainer import STATE_FILE, LoopResult, check_resumable, run_loop, saved_settings

TRAIN_FILE = "train.json"
FIXED_ON_RESUME = (
    "preset",
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "context_length",
    "vocab_size",
    "tokenizer",
    "tokenizer_kind",
    "val_fraction",
)


def resolve(cli: dict[str, Any], loop_cli: dict[str, Any], out: Path, *, resume: bool) -> PretrainSettings:
    """Settings from the command line (None = not given), over the saved run's (on resume), over the preset's."""
    saved = saved_settings(out, TRAIN_FILE, "training") if resume else {}
    given = {k: v for k, v in cli.items() if v is not None and v != []}
    if resume:  # the model's shape is what llama.json says; the rest, what the run was started with
        shape = read_json_object(out / "llama.json", error=UsageError)
        keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "context_length", "vocab_size")
        if missing := [k for k in keys if k not in shape]:
            raise UsageError.naming(f"{{resume}}: {literal(out / 'llama.json')} lacks {literal(', '.join(missing))} (a damaged file?)")
        actual = {**saved, **{k: shape[k] for k in keys}}
        fixed = [k for k in FIXED_ON_RESUME if k in given and given[k] != actual.get(k)]
        if fixed:
            changes = "; ".join(f"{{{k}}} {literal(given[k])} (the run has {literal(actual.get(k))})" for k in fixed)
            raise UsageError.naming(f"{{resume}} cannot change the model, tokenizer or data split: {changes}")
    merged = {**{k: v for k, v in saved.items() if k not in ("loop", "out")}, **given}
    if not merged.get("data"):
        raise UsageError("no training data: give text files, folders or JSONL files")
    settings = PretrainSettings(out=out, **merged)
    loop = {**PRESETS[settings.preset].loop, **saved.get("loop", {}), **{k: v for k, v in loop_cli.items() if v is not None}}
    settings.loop = LoopSettings.from_dict(loop)
    if resume and isinstance(saved.get("loop"), dict):  # refused now, before train.json is rewritten with the new values
        check_resumable(LoopSettings.from_dict(saved["loop"]), settings.loop)
    return settings


def init_weights(model: Transformer, seed: int) -> None:
    """Normal(0, 0.02) weights, residual projections (wo, w2) scaled down by sqrt(2 * n_layers), norms at 1."""
    generator = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(
                    0.0, residual_std if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")) else 0.02, generator=generator
                )


class PretrainTask:
    """Random windows of this rank's shard for training; fixed windows of the held-out tail for validation."""

    def __init__(
        self,
        train: torch.Tensor,
        val: torch.Tensor,
        config: ModelConfig,
        tokenizer: Tokenizer,
        chat_template: str | None,
        loop: LoopSettings,
        dist: Dist,
    ) -> None:
        self.config, self.tokenizer, self.chat_template, self.loop, self.rank = config, tokenizer, chat_template, loop, dist.rank
        start, end = data.shard_bounds(len(train), dist.rank, dist.world)
        self.shard, self.bounds = train[start:end], (start, end)
        windows = data.eval_windows(val, config.context_length, loop.eval_batches * loop.batch_size)
        self.val = windows[dist.rank :: dist.world]

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = data.batch_seed(self.loop.seed, self.rank, step, micro)
        return data.sample_windows(self.shard, self.loop.batch_size, self.config.context_length, seed)

    def val_batches(self):  # type: ignore[no-untyped-def]
        for i in range(0, len(self.val), self.loop.batch_size):
            chunk = self.val[i : i + self.loop.batch_size]
            yield chunk[:, :-1], chunk[:, 1:]

    def write_outputs(self, weights: dict[str, torch.Tensor], out: Path) -> None:
        from .weights import save_native

        save_native(out, self.config, {name: t.float() for name, t in weights.items()}, self.tokenizer, self.chat_template)


def _tokenizer(settings: PretrainSettings, documents: list[data.Document], dist: Dist, *, resume: bool) -> tuple[Tokenizer, str | None]:
    """The run's tokenizer: the output folder's on resume, else --tokenizer's, else one trained by rank 0."""
    from .tokenizer import chat_template_from_folder, load_tokenizer

    out = settings.out
    if resume:
        return load_tokenizer(out), chat_template_from_folder(out)
    if settings.tokenizer:
        return reuse_tokenizer(settings.tokenizer)
    if dist.main:
        vocab = settings.vocab_size or PRESETS[settings.preset].vocab_size
        tokenizer = data.train_tokenizer(documents, vocab_size=vocab, kind=settings.tokenizer_kind)  # type: ignore[arg-type]
        tokenizer.save(out)
    dist.barrier()
    return load_tokenizer(out), None


def reuse_tokenizer(source: str) -> tuple[Tokenizer, str | None]:
    """--tokenizer: a tokenizer.model file, a folder with tokenizer files, or any model path or name."""
    from .registry import resolve_model
    from .tokenizer import SentencePieceTokenizer, SpecialTokens, load_tokenizer

    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".model":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        bos, eos = (i if i >= 0 else None for i in (sp.bos_id(), sp.eos_id()))
        return SentencePieceTokenizer(sp, SpecialTokens(bos, eos, frozenset({eos} - {None}), bos is not None)), None  # type: ignore[arg-type]
    if path.is_dir() and ((path / "tokenizer.model").is_file() or (path / "tokenizer.json").is_file()):
        from .tokenizer import chat_template_from_folder

        return load_tokenizer(path), chat_template_from_folder(path)
    from .weights import load_checkpoint

    checkpoint = load_checkpoint(resolve_model(source))
    return checkpoint.tokenizer, checkpoint.chat_template


def check_out(out: Path, *, resume: bool) -> None:
    if not resume and ((out / STATE_FILE).exists() or (out / "llama.json").exists()):
        raise UsageError.naming(f"{literal(out)} already holds a model; continue its training with {{resume}}, or choose another {{out}}")
    if out.exists() and not out.is_dir():
        raise UsageError.naming(f"{{out}} {literal(out)} is a file; give a folder")


def pretrain(settings: PretrainSettings, *, resume: bool = False, device: str = "auto", fsdp: bool = False) -> LoopResult:
    """Train (or with `resume`, continue training) a model as `settings` say; see the module docstring.

    Under torchrun, `fsdp` shards the model over the ranks instead of replicating it."""
    out = settings.out
    check_out(out, resume=resume)
    documents = data.read_corpus(settings.data)  # bad data fails before any process group forms
    dist = init_distributed(device, fsdp=fsdp)
    try:
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
        if not resume:  # a bad shape, or one that cannot fit in memory, fails before the tokenizer trains
            shape = settings.model_config(settings.vocab_size or PRESETS[settings.preset].vocab_size)
            fixed, per_sequence = training_bytes(shape)
            if dist.sharded:  # FSDP: each rank holds its share of the weights, gradients and moments
                fixed //= dist.world
            ranks = dist.sharing_memory  # under torchrun on the CPU, every rank of the machine needs as much
            fixed, per_sequence = fixed * ranks, per_sequence * ranks
            batch = settings.loop.batch_size
            what = f"training {parameter_count(shape):,} parameters with {{batch_size}} {batch}" + (
                f" in each of {ranks} ranks on this machine" if ranks > 1 else ""
            )
            check_fits(
                what, fixed + batch * per_sequence, per_unit=per_sequence, unit="sequences per batch", base=fixed,
                device_type=dist.device.type, index=dist.device.index,
            )  # fmt: skip
        tokenizer, chat_template = _tokenizer(settings, documents, dist, resume=resume)
        if resume:
            config = ModelConfig.from_dict(read_json_object(out / "llama.json", error=UsageError))
        else:
            config = settings.model_config(tokenizer.vocab_size)
        stream = data.pack(documents, tokenizer)
        key = data.fingerprint(stream)
        corpus = read_json_object(out / TRAIN_FILE, error=UsageError).get("corpus") if resume else None
        if resume and (corpus.get("fingerprint") if isinstance(corpus, dict) else None) != key:
            raise UsageError.naming(
                "{resume}: the training data differ from the run's; give the same files (or none, to reuse the run's paths)"
            )
        train, val = data.split_holdout(stream, settings.val_fraction, config.context_length, dist.world)
        baseline = data.unigram_baseline(train, val, config.vocab_size)
        task = PretrainTask(train, val, config, tokenizer, chat_template, settings.loop, dist)
        model = Transformer(config)
        init_weights(model, settings.loop.seed)
        model.to(dist.device)
        if dist.main:
            summary = {
                "documents": len(documents),
                "tokens": len(stream),
                "train_tokens": len(train),
                "val_tokens": len(val),
                "unigram_baseline": baseline,
                "parameters": sum(p.numel() for p in model.parameters()),
                "world_size": dist.world,
                "fingerprint": key,
            }
            saved = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
            (out / TRAIN_FILE).write_text(json.dumps({"settings": saved, "corpus": summary}, indent=1) + "\n", encoding="utf-8")
            print(
                f"llama: {len(documents)} documents, {len(stream):,} tokens ({len(train):,} train, {len(val):,} held out); "
                f"model {summary['parameters'] / 1e6:.2f}M parameters, context {config.context_length}; "
                f"unigram baseline {baseline:.3f} nats/token (ppl {math.exp(baseline):.1f})",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        if dist.world > 1:
            start, end = task.bounds
            print(
                f"llama: rank {dist.rank}/{dist.world} trains on tokens {start:,}-{end:,} of the {len(train):,}-token training stream",
                file=sys.stderr,
                flush=True,
            )
        return run_loop(model, task, settings.loop, out, dist, resume=resume, label="llama train", extra={"data": key})
    finally:
        close_distributed()
