"""The Python API: `load()` a model once, then `generate` or `stream` with it (`chat.ChatSession` for conversations).

    from llama_cli import load
    llm = load()                                   # default model, CPU, float32
    llm.generate("The quick brown fox", max_tokens=20, temperature=0)
    for token in llm.stream("Once upon a time", max_tokens=50):
        print(token.text, end="")

The CLI is a thin layer over this module.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .chat_template import Message, render_prompt, template_text
from .errors import ModelFormatError, UsageError, literal
from .generation import Generation
from .model import Transformer
from .registry import resolve_model
from .settings import SettingsError, context_window, make_settings
from .tokenizer import Tokenizer
from .weights import Checkpoint, load_checkpoint
from .weights.quantized import QuantizedTensor, dense

DType = Literal["auto", "float32", "bfloat16", "float16"]
MAX_THREADS_PER_CORE = 4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    """`auto` is the CPU; `cuda`/`mps` must actually be present."""
    if name in ("auto", "cpu"):
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SettingsError(f"{{device}} {literal(name)}: no CUDA device is available here; use {{device}} cpu")
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise SettingsError("{device} mps: MPS is not available here; use {device} cpu")
        return torch.device("mps")
    raise SettingsError(f"unknown {{device}} '{literal(name)}'; choose auto, cpu, cuda, cuda:N or mps")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: float32 on the CPU (then `load` may swap in the fast path), bfloat16 on CUDA, float16 on MPS."""
    if name == "auto":
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)
    if name not in DTYPES:
        raise SettingsError(f"unknown {{dtype}} '{literal(name)}'; choose auto, float32, bfloat16 or float16")
    return DTYPES[name]


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Skip `torch.nn.init` while building on the meta device: the checkpoint replaces every value,
    and meta-device initialisers import torch._dynamo, which costs seconds of start-up."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else (kwargs or {}).get("tensor")
        return func(*args, **(kwargs or {}))


def build_model(checkpoint: Checkpoint, dtype: torch.dtype, device: torch.device, *, quantized: bool = False) -> Transformer:
    """Instantiate the model on the meta device and assign the checkpoint's tensors (no copy when possible).

    With `quantized`, GGUF blocks the C kernels support stay as they are (quantized.py) and the
    rest of the model runs in float32; otherwise every weight is dense, in `dtype`.
    """
    with torch.device("meta"), _SkipInit():
        model = Transformer(checkpoint.config)
    expected = set(model.state_dict())
    got = set(checkpoint.weights)
    if expected != got:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise ModelFormatError(f"{checkpoint.source}: weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}  # once: state_dict() walks every module
    for name, tensor in checkpoint.weights.items():
        if tuple(tensor.shape) != shapes[name]:
            raise ModelFormatError(f"{checkpoint.source}: tensor {name} has shape {tuple(tensor.shape)}, config expects {shapes[name]}")
    remaining = checkpoint.weights
    if quantized:
        from .quantized import quantize_model

        remaining = quantize_model(model, checkpoint.weights)
    weights = {name: dense(tensor).to(device=device, dtype=dtype) for name, tensor in remaining.items()}
    model.load_state_dict(weights, assign=True, strict=not quantized)
    return model.eval()


@dataclass
class LLM:
    """A loaded model with its tokenizer and chat template."""

    model: Transformer
    tokenizer: Tokenizer
    checkpoint: Checkpoint
    device: torch.device
    dtype: torch.dtype
    fast: bool = False  # weights kept quantized, multiplied by the C kernels (quantized.py)

    @property
    def path_label(self) -> str:
        """How the model runs, for tables and stats: "quantized (Q4_K, C kernels)" or the reference model's dtype."""
        return f"quantized ({self.checkpoint.quantization}, C kernels)" if self.fast else str(self.dtype).removeprefix("torch.")

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def chat_prompt(self, messages: list[Message], *, template: str = "auto", add_generation_prompt: bool = True) -> str:
        """The conversation rendered through the model's chat template (or a built-in one)."""
        text = template_text(self.checkpoint.chat_template, template)
        return render_prompt(self.tokenizer, text, messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: list[Message], *, template: str = "auto") -> list[int]:
        # The template writes BOS itself when the model wants one, so none is added here.
        return self.tokenizer.encode(self.chat_prompt(messages, template=template), bos=False, parse_special=True)

    def encode_prompt(
        self, prompt: str | Sequence[int], *, chat: bool = False, system: str | None = None, template: str = "auto"
    ) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if chat or system is not None:
            messages: list[Message] = [{"role": "system", "content": system}] if system is not None else []
            messages.append({"role": "user", "content": prompt})
            return self.encode_chat(messages, template=template)
        return self.tokenizer.encode(prompt)

    def stream(
        self,
        prompt: str | Sequence[int],
        *,
        chat: bool = False,
        system: str | None = None,
        template: str = "auto",
        context: int | None = None,
        truncate: bool = False,
        **options: Any,
    ) -> Generation:
        """A `Generation` to iterate over; options are GenerationSettings / SamplingSettings fields.

        A prompt that does not fit the context with room for `max_tokens` is an error, or with
        `truncate` is cut to its end (with a warning)."""
        settings = make_settings(**options)
        context = context_window(context, self.context_length)
        ids = fit_context(
            self.encode_prompt(prompt, chat=chat, system=system, template=template), settings.max_tokens, context, truncate=truncate
        )
        return Generation(self.model, self.tokenizer, ids, settings, context=context)

    def generate(self, prompt: str | Sequence[int], **options: Any) -> str:
        """The completion text of one sample (stream's options apply)."""
        generation = self.stream(prompt, **options)
        for _ in generation:
            pass
        return generation.text


def fit_context(ids: list[int], max_tokens: int, context: int, *, truncate: bool = False) -> list[int]:
    """The prompt `ids` if they fit `context` with room for `max_tokens`; else, with `truncate`, as
    many of their last tokens as fit (the caller compares lengths to tell), without it a ContextOverflowError."""
    from .generation import context_budget

    if truncate and len(ids) + max_tokens > context and context - max_tokens >= 1:
        return ids[-(context - max_tokens) :]
    context_budget(len(ids), max_tokens, context)
    return ids


def _has_quantized(checkpoint: Checkpoint) -> bool:
    return any(isinstance(t, QuantizedTensor) for t in checkpoint.weights.values())


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads, else $LLAMA_THREADS, else the cores other work leaves free (threads.py)."""
    if threads is not None and threads <= 0:
        raise SettingsError(f"{{threads}} must be at least 1, got {threads}")
    if threads is None and os.environ.get("LLAMA_THREADS", "").strip():
        try:
            threads = int(os.environ["LLAMA_THREADS"])
        except ValueError:
            raise UsageError(f"LLAMA_THREADS={os.environ['LLAMA_THREADS']!r} is not a whole number of threads") from None
        if threads <= 0:
            raise UsageError(f"LLAMA_THREADS must be at least 1, got {threads}")
    cores = _cores()
    if threads is not None and threads > MAX_THREADS_PER_CORE * cores:
        # Far more threads than cores only makes every barrier wait (20,000 drove the load to 360, 100,000 crashed libgomp).
        raise SettingsError(f"{threads} threads on {cores} cores: use at most {MAX_THREADS_PER_CORE * cores}")
    if threads is None:
        from .threads import default_threads

        threads = default_threads(cores)
    torch.set_num_threads(threads)


@functools.cache
def _cores() -> int:
    """torch's own default thread count (the physical cores), read before anything changes it."""
    return torch.get_num_threads()


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    dtype: DType = "auto",
    device: str = "auto",
    cache: bool = True,
    threads: int | None = None,
    adapter: str | os.PathLike[str] | None = None,
) -> LLM:
    """Load a model by path or known name (None: $LLAMA_MODEL or the default model).

    With `dtype="auto"` on the CPU, a GGUF's quantized weights stay quantized in memory and run
    through the C kernels (quantized.py; activations float32, int8 inside each matmul as in
    llama.cpp): close to the float32 reference, not bit-identical. `dtype="float32"` is the exact
    reference (every weight dequantized). Without a C compiler the kernels cannot be built and
    the reference runs instead (`kernels.describe()` says why).
    `adapter` is a LoRA adapter folder (`llama finetune`), merged into the weights as they load;
    the model then runs the reference path (the adapter changes the dense weights).
    """
    set_threads(threads)
    path: Path = resolve_model(model)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    checkpoint = load_checkpoint(path, cache=cache)
    if adapter is None and dtype == "auto" and torch_device.type == "cpu" and _has_quantized(checkpoint):
        from .kernels import prepare

        if prepare({t.qtype for t in checkpoint.weights.values() if isinstance(t, QuantizedTensor)}):  # built in parallel
            built = build_model(checkpoint, torch.float32, torch_device, quantized=True)
            return LLM(built, checkpoint.tokenizer, checkpoint, torch_device, torch.float32, fast=True)
    built = build_model(checkpoint, torch_dtype, torch_device)
    if adapter is not None:
        from .lora import apply_adapter, load_adapter

        loaded = load_adapter(adapter)
        loaded.check_base(checkpoint.config, path)
        apply_adapter(built, loaded)
    return LLM(built, checkpoint.tokenizer, checkpoint, torch_device, torch_dtype)
