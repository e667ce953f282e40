"""`llama`: run LLaMA-family language models from the command line or from Python.

    from llama_cli import load
    llm = load()                      # the default model (SmolLM2-135M-Instruct)
    print(llm.generate("The quick brown fox", max_tokens=20))

`load` is imported lazily so that `import llama_cli` (and `llama --help`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .threads import take_snapshot

__version__ = "0.1.0"
take_snapshot()  # the start of the interval over which threads.default_threads sees other work

if TYPE_CHECKING:
    from .api import LLM, load

__all__ = ["LLM", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("LLM", "load"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'llama_cli' has no attribute {name!r}")
