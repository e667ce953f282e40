"""The shape of a LLaMA-family model, independent of the file it came from.

Every loader (GGUF, Hugging Face folder, Meta checkpoint) turns its own metadata into a
`ModelConfig`; the model and the weight cache only ever see this dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

MAX_CONTEXT = 1 << 24  # 16M positions: far beyond any released model, small enough that size arithmetic stays sane


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 style frequency-dependent rope scaling ("llama3" in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192  # context the model was pretrained with before scaling


@dataclass(frozen=True)
class ModelConfig:
    dim: int  # width of the residual stream
    n_layers: int
    n_heads: int
    n_kv_heads: int  # fewer than n_heads means grouped-query attention
    vocab_size: int
    ffn_dim: int  # hidden width of the SwiGLU feed-forward
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    context_length: int = 2048  # longest sequence the model was trained for
    tie_embeddings: bool = False  # output head reuses the token embedding
    head_dim: int = 0  # 0 means dim // n_heads
    rope_scaling: RopeScaling | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "ffn_dim", "context_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"model config: {name} must be an integer, got {value!r}")  # noqa: TRY004 (every loader reports ValueError as a format error)
            if value <= 0:
                raise ValueError(f"model config: {name} must be positive, got {value}")
        if self.context_length > MAX_CONTEXT:
            raise ValueError(f"model config: context_length {self.context_length} is beyond any real model (at most {MAX_CONTEXT})")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive number, got {value!r}")
        if self.rope_scaling is not None:
            scaling = self.rope_scaling
            factors = (scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_context)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in factors):
                raise ValueError(f"model config: rope scaling needs positive finite factors, got {scaling}")

    @property
    def n_params(self) -> int:
        """Parameter count (the tied head counted once)."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        ffn = 3 * self.dim * self.ffn_dim
        per_layer = attn + ffn + 2 * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layers * per_layer + self.dim + head

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        scaling = data.pop("rope_scaling", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model config: unknown fields {sorted(unknown)}")
        return cls(**data, rope_scaling=RopeScaling(**scaling) if scaling else None)
