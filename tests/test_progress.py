"""Progress for long waits (llama_cli/progress.py): nothing for a short wait, one line on a
non-terminal or a bar on a terminal once the wait passes the threshold; never on stdout.

The threshold is injected (0, or a long one), so no test sleeps or depends on the machine's speed.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from llama_cli import progress
from llama_cli.generation import Generation
from llama_cli.progress import Reporter
from llama_cli.settings import make_settings


def test_a_short_wait_prints_nothing() -> None:
    stream = io.StringIO()
    with Reporter(after=3600, stream=stream, terminal=False).wait("prefill", 3000, "tokens") as wait:
        wait.advance(3000)
    assert stream.getvalue() == "" and not wait.shown.is_set()


def test_a_long_wait_is_one_line_otherwise() -> None:
    stream = io.StringIO()
    with Reporter(after=0, stream=stream, terminal=False).wait("prefill", 3000, "tokens") as wait:
        for _ in range(6):
            wait.advance(500)
    assert stream.getvalue() == "llama: prefill: 3,000 tokens ...\n" and wait.done == 3000


def test_one_long_call_shows_while_it_runs() -> None:
    # No progress is reported from inside the wait (a compiler run, one prefill pass): the timer shows it.
    stream = io.StringIO()
    with Reporter(after=0.01, stream=stream, terminal=False).wait("compiling the C kernels") as wait:
        assert wait.shown.wait(timeout=60)
        assert stream.getvalue() == "llama: compiling the C kernels ...\n"


def test_a_terminal_gets_a_bar_that_leaves_no_line() -> None:
    stream = io.StringIO()
    reporter = Reporter(after=0, stream=stream, terminal=True)
    with reporter.wait("prefill", 3000, "tokens") as wait, reporter.wait("compiling the C kernels") as inner:
        wait.advance(1500)
        assert inner.shown.is_set()  # an inner wait draws no second bar: the outer one keeps moving
    drawn = stream.getvalue()
    assert "llama: prefill" in drawn and "tokens" in drawn and "compiling" not in drawn
    with reporter.wait("loading") as again:  # the bar was handed back
        pass
    assert "llama: loading" in stream.getvalue() and again.shown.is_set()


def test_the_prefill_shows_through_generation(tiny_llm, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    ids = tiny_llm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 80)  # > one 512-token chunk
    settings = make_settings(max_tokens=2, temperature=0.0)
    stream = io.StringIO()
    shown = Generation(tiny_llm.model, tiny_llm.tokenizer, ids, settings, progress=Reporter(after=0, stream=stream))
    plain = Generation(tiny_llm.model, tiny_llm.tokenizer, ids, settings)
    assert [e.id for e in shown] == [e.id for e in plain]
    assert stream.getvalue() == f"llama: prefill: {len(ids):,} tokens ...\n"
    assert capsys.readouterr() == ("", "")  # the library is silent without a reporter


def test_the_cli_shows_long_waits_on_stderr_only(llama, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    args = ["generate", "-m", tiny_model_path, "-t", "0", "-n", "3", "--dtype", "float32", "Once upon a time"]
    monkeypatch.setattr(progress, "AFTER", 3600.0)  # every wait short, however busy the machine
    quick = llama(*args)
    assert quick.exit_code == 0 and quick.stderr == ""  # a short run prints nothing new
    monkeypatch.setattr(progress, "AFTER", 0.0)
    slow = llama(*args)
    assert slow.exit_code == 0 and slow.stdout == quick.stdout
    assert slow.stderr == f"llama: loading {tiny_model_path} ...\nllama: prefill: 4 tokens ...\n"


@pytest.mark.parametrize("command", [["chat", "-n", "2"], ["summarize", "-n", "4"]])
def test_chat_and_the_presets_show_their_prefill(command: list[str], llama, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(progress, "AFTER", 0.0)
    result = llama(*command, "-m", tiny_model_path, "--dtype", "float32", input="Hello there.\n")
    assert result.exit_code == 0, result.stderr
    assert "llama: prefill: " in result.stderr and "prefill" not in result.stdout
