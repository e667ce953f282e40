"""The bad-input matrix: the `llama` command over every command, in-process through its own
`main` (conftest.py's `run_llama`), except what needs a real process: signals and closed pipes.

Each case expects its documented exit code (2 usage, 1 runtime error, 130 interrupted), one line
on stderr that says what was wrong, and never a traceback. The number of cases is printed at the
end of the test session (see conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Run, finish_after_sigint, run_llama, start_until

LLAMA = [sys.executable, "-m", "llama_cli"]
# A command without -m that gets as far as loading loads the tiny model ($LLAMA_MODEL): the matrix
# is about what the commands refuse, not about what a model says.
pytestmark = [pytest.mark.bad_input, pytest.mark.usefixtures("tiny_unless_real")]


# Every command that loads a model, with the arguments and stdin it needs to get that far.
MODEL_COMMANDS: dict[str, tuple[list[str], str | None]] = {
    "generate": (["-n", "2", "Hello"], None),
    "chat": (["-n", "2"], "Hello\n"),
    "tokenize": (["Hello"], None),
    "show": ([], None),
    "summarize": (["-n", "2"], "Some text to summarize."),
    "translate": (["--to", "French", "-n", "2"], "Hello."),
    "qa": (["What?", "-n", "2"], "Context."),
    "bench": (["-p", "8", "-n", "2", "-r", "1"], None),
    "perplexity": ([], "Some text to score, long enough for a few tokens."),
}


def run(args: list[str | Path], *, stdin: bytes | str | None = None, env: dict[str, str] | None = None) -> Run:
    return run_llama(*args, input=stdin, env=env)


def assert_clean_failure(result: Run, code: int, *needles: str) -> None:
    err = result.stderr
    assert result.exit_code == code, f"exit {result.exit_code}, stderr: {err}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llama: error:"), err
    for needle in needles:
        assert needle.lower() in err.lower(), err


def _real_gguf(default_model_path: Path) -> bytes:
    with open(default_model_path, "rb") as f:
        return f.read(2_000_000)


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory, default_model_path: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-models")
    head = _real_gguf(default_model_path)
    files = {
        "missing": root / "nope.gguf",
        "empty": root / "empty.gguf",
        "truncated": root / "truncated.gguf",
        "bad-magic": root / "magic.gguf",
        "text-file": root / "notes.gguf",
        "no-model-folder": root / "folder",
        "huge-tensor-count": root / "huge.gguf",
        "corrupt-safetensors": root / "hf",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(head[:1_500_000])  # cut inside the vocabulary strings
    files["bad-magic"].write_bytes(b"GGML" + head[4:4096])
    files["text-file"].write_text("just some notes\n")
    files["no-model-folder"].mkdir()
    (files["no-model-folder"] / "readme.txt").write_text("nothing here")
    files["huge-tensor-count"].write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 1) + head[24:4096])
    hf = files["corrupt-safetensors"]
    hf.mkdir()
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    config |= {"intermediate_size": 128, "vocab_size": 300}
    (hf / "config.json").write_text(json.dumps(config))
    (hf / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{")
    return files


BAD_MODEL_CASES = ["missing", "empty", "truncated", "bad-magic", "text-file", "no-model-folder", "huge-tensor-count", "corrupt-safetensors"]


@pytest.mark.parametrize("case", BAD_MODEL_CASES)
@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_bad_model_files(command: str, case: str, bad_models: dict[str, Path]) -> None:
    args, stdin = MODEL_COMMANDS[command]
    result = run([command, "-m", str(bad_models[case]), *args], stdin=stdin)
    assert_clean_failure(result, 1)


@pytest.mark.parametrize("command", list(MODEL_COMMANDS) + ["models", "pull", "completions", "train", "finetune", "merge"])
def test_unknown_option_is_a_usage_error(command: str) -> None:
    assert_clean_failure(run([command, "--no-such-option"]), 2, "no such option")


def test_bare_llama_prints_help_once() -> None:
    result = run([])
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.count("Usage:") == 1


@pytest.mark.parametrize("command,args", [
    ("generate", ["-t", "-1", "x"]), ("generate", ["--top-p", "0", "x"]), ("generate", ["--top-k", "-3", "x"]),
    ("generate", ["-n", "0", "x"]), ("generate", ["-t", "hot", "x"]), ("generate", ["--dtype", "float8", "x"]),
    ("generate", ["--device", "tpu", "x"]), ("chat", ["-t", "-1"]), ("chat", ["--top-p", "2"]),
    ("summarize", ["--length", "huge"]), ("translate", []), ("qa", []), ("completions", ["tcsh"]),
    ("generate", ["--template", "nosuch", "x"]), ("bench", ["-r", "0"]), ("bench", ["-p", "0", "-n", "0"]),
    ("perplexity", ["--ctx", "1"]), ("train", ["x.txt", "-o", "out", "--preset", "galaxy"]), ("train", ["x.txt"]),
    ("finetune", ["x.jsonl", "-o", "out", "--lora-rank", "0"]), ("generate", ["--ctx", "0", "x"]), ("generate", ["--ctx", "-5", "x"]),
    ("chat", ["--ctx", "0"]), ("finetune", ["x.jsonl", "-o", __file__]), ("generate", ["--repeat-penalty", "inf", "x"]),
    ("generate", ["--threads", "-1", "x"]),
])  # fmt: skip
def test_invalid_values_are_usage_errors(command: str, args: list[str]) -> None:
    assert_clean_failure(run([command, *args], stdin="text"), 2)


TEXT_COMMANDS = {
    "generate": ["-n", "2"],
    "tokenize": [],
    "summarize": ["-n", "2"],
    "translate": ["--to", "French", "-n", "2"],
    "qa": ["What is it?", "-n", "2"],
    "perplexity": [],
}


@pytest.mark.parametrize(
    "stdin,needle", [(b"", "empty"), (b"\x00\x01\x02binary\xff\xfe", ""), (b"caf\xe9 cr\xe8me", "UTF-8")], ids=["empty", "binary", "latin1"]
)
@pytest.mark.parametrize("command", list(TEXT_COMMANDS))
def test_bad_stdin(command: str, stdin: bytes, needle: str) -> None:
    if command == "tokenize" and stdin == b"":  # an empty text is not an error here: it has zero tokens
        listed, counted = run([command], stdin=stdin), run([command, "--count"], stdin=stdin)
        assert (listed.exit_code, listed.stdout.strip(), listed.stderr) == (0, "", "")
        assert (counted.exit_code, counted.stdout, counted.stderr) == (0, "0\n", "")
        return
    result = run([command, *TEXT_COMMANDS[command]], stdin=stdin)
    assert_clean_failure(result, 1, needle)


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_prompt_longer_than_context(command: str, tiny_model_path: Path) -> None:
    args = ["-m", tiny_model_path, "--ctx", "32", "-n", "8"] + (["word " * 60] if command == "generate" else [])
    stdin = None if command == "generate" else "word " * 60 + "\n"
    assert_clean_failure(run([command, *args], stdin=stdin), 1, "context")


@pytest.mark.parametrize("command", ["summarize", "translate", "qa"])
def test_unreadable_input_file(command: str, tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    extra = {"summarize": [str(folder)], "translate": ["--to", "French", str(folder)], "qa": ["What?", "--context", str(folder)]}[command]
    assert_clean_failure(run([command, *extra]), 1)


def test_unwritable_cache_still_runs_uncached(tmp_path: Path, tiny_gguf_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    model = tmp_path / "model.gguf"  # a path of its own: in-process loads are memoised by path
    model.symlink_to(tiny_gguf_path)
    result = run(
        ["generate", "-m", model, "--dtype", "float32", "-t", "0", "-n", "3", "Hello"], env={"LLAMA_CACHE": str(blocker / "cache")}
    )
    err = result.stderr
    assert result.exit_code == 0, err
    assert "llama: warning:" in err and "uncached" in err and "Traceback" not in err
    assert result.stdout


def test_interrupted_conversion_leaves_no_cache_entry(tmp_path: Path, tiny_gguf_path: Path) -> None:
    """SIGINT while the metadata entry is written: no half-written cache entry is ever left in place.
    The tiny GGUF carries the default model's whole vocabulary (what makes the entry slow to
    write); float32 keeps the fresh cache from building the C kernels first."""
    model = tmp_path / "model.gguf"
    model.symlink_to(tiny_gguf_path)
    cache = tmp_path / "cache"
    env = dict(os.environ, LLAMA_CACHE=str(cache))
    proc = subprocess.Popen(
        [*LLAMA, "generate", "-m", str(model), "--dtype", "float32", "-n", "2", "Hi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    while not (cache / "gguf").exists() and proc.poll() is None:  # created just before the entry is written
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err
    for config in cache.rglob("llama.json"):  # an entry in place is a whole one (written aside, then renamed)
        if ".tmp" not in str(config):
            assert (config.parent / "origin.json").is_file() and (config.parent / "tokenizer.json").is_file()
    # the next run converts cleanly either way
    again = run(["generate", "-m", model, "--dtype", "float32", "-t", "0", "-n", "2", "Hi"], env={"LLAMA_CACHE": str(cache)})
    assert again.exit_code == 0, again.stderr


@pytest.mark.parametrize("ready", ["typer", "llama_cli.weights.gguf"], ids=["importing", "loading"])
def test_sigint_while_starting_exits_130(ready: str, default_model_path: Path) -> None:
    """Ctrl-C during imports or model loading (the default model's GGUF: long enough to land in): exit 130, no traceback."""
    proc, seen = start_until(["generate", "-m", str(default_model_path), "-n", "2", "Hi"], ready)
    _, err = finish_after_sigint(proc, seen)
    if proc.returncode == 0:
        pytest.skip("finished before the signal arrived")
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


@pytest.mark.parametrize("command,stdin", [
    (["generate", "-t", "0", "--ignore-eos", "-n", "300", "Tell me a story"], None),
    (["chat", "-t", "0", "-n", "300"], "Tell me a long story\n"),
    (["tokenize", "-"], "word " * 3000),
], ids=["generate", "chat", "tokenize"])  # fmt: skip
def test_closed_pipe_is_quiet(command: list[str], stdin: str | None) -> None:
    cmd = " ".join(LLAMA + [f"'{c}'" for c in command]) + " | head -c 10"
    result = subprocess.run(cmd, shell=True, input=(stdin or "").encode(), capture_output=True, timeout=300)
    assert len(result.stdout) == 10
    assert b"Traceback" not in result.stderr and b"Error" not in result.stderr


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-data")
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(b"\x00\x01binary\xff")
    (root / "latin1.txt").write_bytes(b"caf\xe9 cr\xe8me, " * 20)
    good = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'
    (root / "broken.jsonl").write_text(good + "\n" + good + "\n{not json\n")
    (root / "no-assistant.jsonl").write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    (root / "not-an-adapter").mkdir()
    return root


@pytest.mark.parametrize("args,needle", [
    (["train", "missing.txt"], "no such file"),
    (["train", "empty.txt"], "empty"),
    (["train", "binary.txt"], "binary"),
    (["train", "latin1.txt"], "UTF-8"),
    (["finetune", "missing.jsonl"], "no such file"),
    (["finetune", "empty.txt"], "empty"),
    (["finetune", "broken.jsonl"], "line 3"),
    (["finetune", "no-assistant.jsonl"], "line 1"),
    (["merge", "not-an-adapter"], "adapter"),
    (["merge", "missing-adapter"], "adapter"),
], ids=lambda value: "-".join(value) if isinstance(value, list) else None)  # fmt: skip
def test_bad_training_data(args: list[str], needle: str, bad_data: Path, tmp_path: Path) -> None:
    command, name = args
    steps = [] if command == "merge" else ["--max-steps", "1"]
    result = run([command, bad_data / name, "-o", tmp_path / "out", *steps])
    assert_clean_failure(result, 1, needle)
