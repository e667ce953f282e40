"""What a generation is asked to do: sampling and generation settings, checked when they are made.

No torch here, so that a command line can be checked in milliseconds, before the heavy imports.
Errors name the settings' fields as a Python caller writes them (`temperature must be >= 0`);
the CLI shows its own flag names instead (`--temperature must be >= 0`), mapped once in
cli/options.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .schema import Spec


class SettingsError(UsageError):
    """A setting with no meaning. The message is a template over field names: `{temperature} must be >= 0`
    (errors.LlamaError.naming: the CLI writes the fields as flags)."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render({}))


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1 = off
    min_p: float = 0.05  # 0 = off; keeps tokens with p >= min_p * p(most likely)
    repetition_penalty: float = 1.0  # 1 = off; CTRL-style: divides positive logits of seen tokens
    frequency_penalty: float = 0.0  # subtracts count * penalty (OpenAI style)
    presence_penalty: float = 0.0  # subtracts penalty once for every token already seen

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed; sample i uses seed + i
MAX_LOGPROBS = 100  # alternatives reported per token (OpenAI allows 20)
MAX_LOOKUP = 64  # tokens drafted per step: a verify pass over more costs more than it can save
MAX_SAMPLES = 1024  # completions of one prompt in one batch (the KV cache's size is checked too, kv_cache.py)


def check_settings(s: SamplingSettings) -> None:
    """Raise SettingsError (a UsageError: exit 2) for values that have no meaning."""
    if not 0 <= s.temperature < math.inf:
        raise SettingsError(f"{{temperature}} must be >= 0 (0 = greedy) and finite, got {s.temperature}")
    if s.top_k < 0:
        raise SettingsError(f"{{top_k}} must be >= 0 (0 = off), got {s.top_k}")
    if not 0 < s.top_p <= 1:
        raise SettingsError(f"{{top_p}} must be in (0, 1], got {s.top_p}")
    if not 0 <= s.min_p <= 1:
        raise SettingsError(f"{{min_p}} must be in [0, 1], got {s.min_p}")
    if not 0 < s.repetition_penalty < math.inf:
        raise SettingsError(f"{{repetition_penalty}} must be > 0 (1 = off) and finite, got {s.repetition_penalty}")
    for name in ("frequency_penalty", "presence_penalty"):
        if not math.isfinite(getattr(s, name)):
            raise SettingsError(f"{{{name}}} must be a finite number (0 = off), got {getattr(s, name)}")


@dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int = 256
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    stop: tuple[str, ...] = ()  # strings that end the text; never printed
    ignore_eos: bool = False  # forbid end-of-sequence tokens so exactly max_tokens are produced
    seed: int | None = None  # None draws a fresh seed for every run
    samples: int = 1
    logprobs: int = 0  # how many top alternatives to report per token
    lookup: int = 0  # prompt-lookup decoding: draft up to this many tokens per step (0 = off); see lookup.py
    constraint: Spec | None = None  # structured output: every sample must match it (schema.py, constraints.py)
    no_repeat_ngram: int = 0  # never repeat a run of this many generated tokens (0 = off); the presets' loop guard

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise SettingsError(f"{{max_tokens}} must be >= 1, got {self.max_tokens}")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise SettingsError(f"{{samples}} must be between 1 and {MAX_SAMPLES}, got {self.samples}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED - (self.samples - 1):
            raise SettingsError(f"{{seed}} must be between 0 and {MAX_SEED - (self.samples - 1)} (sample i uses seed + i), got {self.seed}")
        if not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise SettingsError(f"{{logprobs}} must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        if any(s == "" for s in self.stop):
            raise SettingsError("{stop} needs a non-empty string")
        if not 0 <= self.lookup <= MAX_LOOKUP:
            raise SettingsError(f"{{lookup}} must be between 0 (off) and {MAX_LOOKUP}, got {self.lookup}")
        if self.lookup and self.samples > 1:
            raise SettingsError("{lookup} works with one sample; drop {samples} or {lookup}")
        if self.no_repeat_ngram < 0:
            raise SettingsError(f"{{no_repeat_ngram}} must be >= 0 (0 = off), got {self.no_repeat_ngram}")
        if self.constraint is not None and self.ignore_eos:
            raise SettingsError("{ignore_eos} cannot be combined with a constraint: the output ends where the value does")


def make_settings(**options: Any) -> GenerationSettings:
    """GenerationSettings from flat keyword options (`temperature=0`, `max_tokens=50`, `stop=[...]`)."""
    sampling_fields = set(SamplingSettings.__dataclass_fields__)
    sampling = {k: options.pop(k) for k in list(options) if k in sampling_fields}
    unknown = set(options) - set(GenerationSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation options: {sorted(unknown)}")
    if "stop" in options:
        options["stop"] = tuple(options["stop"] or ())
    return GenerationSettings(sampling=SamplingSettings(**sampling), **options)


def context_window(requested: int | None, model_context: int) -> int:
    """The context window to use: `requested` (None: the model's), never beyond the model's own,
    with a warning when it had to be cut (positions past it were never trained)."""
    if requested is not None and requested > model_context:
        import warnings

        warnings.warn(f"a context of {requested:,} tokens is beyond the model's {model_context:,}; using {model_context:,}", stacklevel=2)
    return min(requested or model_context, model_context)
