"""What shapes a training run, without torch: the loop settings, `llama train`'s presets and `llama finetune`'s defaults.

The CLI reads these to check options and to show the defaults in `--help` before anything heavy
is imported; trainer.py, train.py and finetune.py run with them. Errors name the fields (the
CLI shows them as flags).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .errors import UsageError
from .settings import SettingsError


@dataclass
class LoopSettings:
    """Everything that shapes the loss curve, saved with each checkpoint and checked on resume."""

    max_steps: int = 300
    batch_size: int = 16  # sequences per micro-batch on each rank
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4  # where the cosine ends
    warmup: int = 30  # steps of linear warmup from 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    eval_every: int = 50
    eval_batches: int = 8  # validation batches (of batch_size sequences) per evaluation
    log_every: int = 10
    save_every: int = 100
    seed: int = 1337
    precision: str = "auto"  # auto (bfloat16 autocast on CUDA, float32 elsewhere), float32, bfloat16

    CHANGEABLE = ("max_steps", "eval_every", "log_every", "save_every")  # may differ on --resume

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{{{name}}} must be at least 1, got {getattr(self, name)}")
        if not all(math.isfinite(getattr(self, name)) for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip")):
            raise SettingsError("{lr}, {min_lr}, {weight_decay}, {beta1}, {beta2} and {grad_clip} must be finite numbers")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise SettingsError(f"{{beta1}} and {{beta2}} must be in [0, 1), got {self.beta1} and {self.beta2}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise SettingsError(f"learning rates must satisfy 0 <= {{min_lr}} <= {{lr}} and {{lr}} > 0 (got {self.min_lr} and {self.lr})")
        if self.warmup < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise SettingsError("{warmup}, {grad_clip} and {weight_decay} cannot be negative")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise SettingsError(f"unknown {{precision}} '{self.precision}'; choose auto, float32 or bfloat16")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Preset:
    """A model shape plus the loop settings that suit it."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    context_length: int
    vocab_size: int
    loop: dict[str, Any]
    about: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        context_length=64,
        vocab_size=512,
        about="tests and demos: 0.13M parameters, seconds on a laptop CPU",
        loop={"batch_size": 16, "lr": 3e-3, "min_lr": 3e-4, "warmup": 20, "max_steps": 300, "eval_every": 50, "save_every": 100},
    ),
    "small": Preset(
        dim=288,
        n_layers=6,
        n_heads=6,
        n_kv_heads=6,
        context_length=256,
        vocab_size=4096,
        about="llama2.c's stories15M shape, a 4k vocabulary: ~7M parameters",
        loop={"batch_size": 32, "lr": 1e-3, "min_lr": 1e-4, "warmup": 200, "max_steps": 5000, "eval_every": 250, "save_every": 500},
    ),
    "base": Preset(
        dim=512,
        n_layers=8,
        n_heads=8,
        n_kv_heads=8,
        context_length=512,
        vocab_size=8192,
        about="llama2.c's stories42M shape: ~30M parameters, for a GPU",
        loop={"batch_size": 32, "lr": 6e-4, "min_lr": 6e-5, "warmup": 500, "max_steps": 20000, "eval_every": 500, "save_every": 1000},
    ),
    "large": Preset(
        dim=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        context_length=1024,
        vocab_size=32000,
        about="GPT-2 small's shape in LLaMA blocks: ~110M parameters, GPUs",
        loop={
            "batch_size": 16,
            "grad_accum": 4,
            "lr": 3e-4,
            "min_lr": 3e-5,
            "warmup": 1000,
            "max_steps": 50000,
            "eval_every": 1000,
            "save_every": 1000,
        },
    ),
}


def parameter_count(config: ModelConfig) -> int:
    attention = config.dim * config.head_dim * (2 * config.n_heads + 2 * config.n_kv_heads)  # wq, wo; wk, wv
    return config.vocab_size * config.dim + config.n_layers * (attention + 3 * config.dim * config.ffn_dim + 2 * config.dim) + config.dim


def training_bytes(config: ModelConfig) -> tuple[int, int]:
    """Rough float32 memory for training: (fixed: weights, gradients and AdamW's two moments, 16
    bytes a parameter; per sequence of a micro-batch: the activations kept for the backward pass,
    attention scores and logits included). An estimate to refuse the impossible, not a budget."""
    ctx = config.context_length
    per_layer = 12 * config.dim + 4 * config.ffn_dim + config.n_heads * ctx
    per_sequence = 4 * ctx * (config.n_layers * per_layer + 3 * config.vocab_size)
    return 16 * parameter_count(config), per_sequence


def ffn_width(dim: int, multiple_of: int = 32) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4*dim (same parameters as a 4*dim MLP), rounded up to multiple_of."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


MIN_VOCAB = 64  # a tokenizer needs room for its special tokens and the most common characters


@dataclass
class PretrainSettings:
    """What `llama train` was asked to do; None means "the preset's" (or, on --resume, the run's)."""

    data: list[str]
    out: Path
    preset: str = "tiny"
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    context_length: int | None = None
    vocab_size: int | None = None
    tokenizer: str | None = None  # reuse this model's (or tokenizer file's) tokenizer instead of training one
    tokenizer_kind: str = "bpe"
    val_fraction: float = 0.1
    loop: LoopSettings = None  # type: ignore[assignment]  # None: the preset's

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise SettingsError(f"unknown {{preset}} '{self.preset}'; choose {', '.join(PRESETS)}")
        if self.loop is None:
            self.loop = LoopSettings.from_dict(PRESETS[self.preset].loop)
        if self.vocab_size is not None and self.vocab_size < MIN_VOCAB:
            raise SettingsError(f"{{vocab_size}} must be at least {MIN_VOCAB} (omit it for the preset's), got {self.vocab_size}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        p = PRESETS[self.preset]

        def pick(value: int | None, default: int) -> int:
            return default if value is None else value

        dim = pick(self.dim, p.dim)
        heads = pick(self.n_heads, p.n_heads if self.dim is None else max(1, dim // 64))  # a new width: 64-wide heads
        kv_heads = pick(self.n_kv_heads, p.n_kv_heads if self.n_heads is None and self.dim is None else heads)
        try:
            config = ModelConfig(
                dim=dim,
                n_layers=pick(self.n_layers, p.n_layers),
                n_heads=heads,
                n_kv_heads=kv_heads,
                vocab_size=vocab_size,
                ffn_dim=ffn_width(dim),
                context_length=pick(self.context_length, p.context_length),
                tie_embeddings=True,
            )
        except (ValueError, ZeroDivisionError) as error:
            raise UsageError(f"impossible model shape: {error}") from None
        if dim % heads or config.head_dim % 2:
            raise SettingsError(f"{{dim}} {dim} must split into {{n_heads}} {heads} heads of an even width")
        return config


DEFAULT_LOOP = {  # LoRA: few parameters, a large step
    "max_steps": 100,
    "batch_size": 4,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup": 10,
    "weight_decay": 0.0,
    "eval_every": 25,
    "eval_batches": 4,
    "log_every": 5,
    "save_every": 50,
}
FULL_LOOP = {**DEFAULT_LOOP, "lr": 5e-5, "min_lr": 5e-6}  # all weights move: a much smaller step
