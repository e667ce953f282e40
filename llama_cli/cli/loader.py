"""Loading the model a command's options name, through a loader that can be swapped.

Commands call `load_model(options)`. The app loads through `ModelLoader` (memoised, so that
in-process callers pay for a model once); a caller driving the app in-process passes its own
loader as the Click context object, e.g. `CliRunner().invoke(app, args, obj=FixedModel(llm))`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..api import LLM


@dataclass(frozen=True)
class ModelOptions:
    """What the model options of a command say: `llama_cli.load`'s arguments, with --ctx."""

    model: str | None = None  # path or known name; None: $LLAMA_MODEL or the default model
    dtype: str = "auto"
    device: str = "auto"
    ctx: int | None = None  # the context window to use; None: the model's own
    threads: int | None = None
    no_cache: bool = False
    adapter: str | None = None

    def __post_init__(self) -> None:
        if self.ctx is not None and self.ctx < 1:  # 0 quietly meant the model's own in generate; -5 failed later, oddly
            from ..errors import UsageError

            raise UsageError(f"--ctx must be at least 1, got {self.ctx}")


class ModelLoader:
    """Loads models by their options; a model folder that is a LoRA adapter is refused with a hint."""

    def load(self, options: ModelOptions) -> LLM:
        from ..errors import UsageError
        from ..lora import ADAPTER_CONFIG
        from ..progress import Reporter
        from ..registry import resolve_model

        path = resolve_model(options.model)
        if (path / ADAPTER_CONFIG).is_file():
            raise UsageError(
                f"{path} is a LoRA adapter, not a model: give it as --adapter {path} (with -m its base model, if not the default)"
            )
        with Reporter().wait(f"loading {path}"):  # a first load of a big file converts and caches it: seconds
            return _load_path(str(path), options.dtype, options.device, options.threads, options.no_cache, options.adapter)


class FixedModel(ModelLoader):
    """A loader that hands out one model already loaded, whatever the options (for tests and embedding)."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def load(self, options: ModelOptions) -> LLM:
        return self.llm


DEFAULT_LOADER = ModelLoader()


def load_model(options: ModelOptions) -> LLM:
    """The model `options` name, through the loader the app was invoked with (Click's context object), else the default."""
    try:
        from typer._click.globals import get_current_context  # newer Typer vendors click
    except ImportError:  # pragma: no cover - older Typer uses click itself
        from click import get_current_context

    context = get_current_context(silent=True)
    loader = context.find_object(ModelLoader) if context is not None else None
    return (loader or DEFAULT_LOADER).load(options)


@functools.lru_cache(maxsize=2)
def _load_path(path: str, dtype: str, device: str, threads: int | None, no_cache: bool, adapter: str | None) -> LLM:
    from ..api import load

    return load(path, dtype=dtype, device=device, threads=threads, cache=not no_cache, adapter=adapter)  # type: ignore[arg-type]
