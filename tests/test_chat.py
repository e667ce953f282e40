"""`llama chat`: replies match a fresh run on the re-rendered conversation (checked against
transformers), the KV cache carries the conversation, old turns are dropped when the context fills,
the interactive REPL under a pseudo-terminal, and the sandboxed template.

Greedy and a few tokens per reply throughout, to keep the tests fast on a small CPU.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama_cli.chat import ChatSession, HistoryError, parse_messages
from llama_cli.cli import app
from llama_cli.cli.loader import FixedModel
from llama_cli.kv_cache import common_prefix
from llama_cli.repl import Repl, WordWrap, run_scripted

runner = CliRunner()
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default
EVIL_TEMPLATE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"


@pytest.fixture
def chat_cli(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Run `llama <args>` in-process on the tiny model, or on the default model (float32, as `auto`
    gives on CPU) where the test is marked real_model; each loaded once per session."""
    llm = request.getfixturevalue("llm" if request.node.get_closest_marker("real_model") else "tiny_llm")

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(app, list(args), input=input, obj=FixedModel(llm))

    return run


def greedy(llm, max_tokens: int):  # type: ignore[no-untyped-def]
    from llama_cli.api import make_settings

    return make_settings(temperature=0, max_tokens=max_tokens)


# ---------------------------------------------------------------- no model needed


def test_parse_messages_accepts_a_conversation_and_refuses_others() -> None:
    good = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "interrupted": True},
    ]
    assert parse_messages(good, "f") == good
    assert parse_messages([], "f") == []
    bad = {
        "expected a JSON list": {"role": "user"},
        "message 0 is not": [{"role": "robot", "content": "x"}],
        "message 1 is not": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}],
        "message 1 should be a assistant": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        "ends with a user message": [{"role": "user", "content": "a"}],
    }
    for message, data in bad.items():
        with pytest.raises(HistoryError, match=message):
            parse_messages(data, "f")
    assert parse_messages([{"role": "user", "content": "a"}], "f", conversation=False)  # tokenize --chat takes any list


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_multiline_blocks() -> None:
    lines = iter(['"""first', "  second", 'third"""', '"""one line"""', "  /stats  ", '"""', "/not a command", '"""'])
    repl = Repl(None, read=lambda prompt: next(lines))  # type: ignore[arg-type]
    assert repl.read_message() == ("first\n  second\nthird", True)
    assert repl.read_message() == ("one line", True)
    assert repl.read_message() == ("/stats", False)
    assert repl.read_message() == ("/not a command", True)


# ---------------------------------------------------------------- the default model


def reference_reply(hf_model, hf_tokenizer, messages: list[dict], max_new_tokens: int) -> str:  # type: ignore[no-untyped-def,type-arg]
    """transformers' greedy reply to the whole conversation, rendered afresh."""
    import torch

    ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = torch.tensor([list(ids)])
    with torch.inference_mode():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    return hf_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def turn_stats(stderr: str) -> list[tuple[int, int, int]]:
    """(prompt, from the cache, prefilled) for each `turn N:` line of --stats."""
    pattern = r"turn \d+: prompt (\d+) tokens \((\d+) from the cache, (\d+) prefilled"
    return [tuple(map(int, m)) for m in re.findall(pattern, stderr)]  # type: ignore[misc]


@pytest.mark.real_model
def test_scripted_conversation_matches_transformers(chat_cli, hf_model, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    # turn 1 runs into -n, so its last token never entered the cache; the others end at <|im_end|>
    questions = ["Tell me about Paris.", "What is the capital of Italy?", "Which of the two cities is older?"]
    result = chat_cli("chat", "-t", "0", "-n", "24", "--stats", input="".join(q + "\n" for q in questions))
    assert result.exit_code == 0, result.stderr

    messages: list[dict] = []  # type: ignore[type-arg]
    expected = ""
    for question in questions:
        messages.append({"role": "user", "content": question})
        reply = reference_reply(hf_model, hf_tokenizer, messages, 24)
        messages.append({"role": "assistant", "content": reply})
        expected += reply + "\n"
    assert "Paris" in expected
    assert result.stdout == expected  # only the replies, each followed by a newline

    stats = turn_stats(result.stderr)
    assert len(stats) == 3
    assert stats[0][1] == 0  # turn 1 prefills everything
    assert "stop: length" in result.stderr.splitlines()[0]
    for (prompt_before, _, _), (prompt, cached, prefilled) in itertools.pairwise(stats):
        assert cached >= prompt_before  # the earlier conversation came from the cache
        assert cached + prefilled == prompt


def test_turn_two_prefills_only_the_new_tokens(tiny_llm) -> None:  # type: ignore[no-untyped-def]
    llm = tiny_llm
    session = ChatSession(llm, greedy(llm, 8))
    long_message = (
        "Here is a list of fruits: " + ", ".join(["apple", "banana", "cherry", "plum", "pear", "fig"] * 24) + ". Which fruit comes first?"
    )
    for _ in session.turn(long_message):
        pass
    first = session.stats[0]
    assert first.cached_tokens == 0 and first.prefilled_tokens == first.prompt_tokens > 200
    in_cache = list(session.cache.held[0])

    for _ in session.turn("Thanks!"):
        pass
    second = session.stats[1]
    prompt = session._encode(session.messages[:-1])  # the conversation up to the new assistant header
    assert second.prompt_tokens == len(prompt)
    assert second.cached_tokens == common_prefix(prompt, in_cache) > first.prompt_tokens
    assert second.prefilled_tokens == len(prompt) - second.cached_tokens < 20
    # ... and the reply is exactly what a fresh run on the whole re-rendered conversation gives
    assert session.messages[-1]["content"] == llm.generate(prompt, temperature=0, max_tokens=8)


def test_context_overflow_drops_oldest_turns_and_keeps_answering(tiny_llm, capsys) -> None:  # type: ignore[no-untyped-def]
    llm = tiny_llm
    system = "Answer in one short sentence."
    session = ChatSession(llm, greedy(llm, 24), system=system, context=110)
    questions = [f"What is the capital of {country}?" for country in ("France", "Spain", "Japan", "Peru", "Chile")]
    run_scripted(session, io.StringIO("\n".join(questions) + "\n"), stats=True)
    out = capsys.readouterr()
    assert re.search(r"\[dropped the oldest \d+ messages to fit the 110-token context\]", out.err), out.err
    assert any(s.dropped_messages for s in session.stats)
    assert len(session.stats) == 5 and all(s.stop_reason in ("eos", "length") for s in session.stats)
    assert all(s.prompt_tokens + 24 <= 110 for s in session.stats)
    assert out.out.count("\n") == 5 and all(line.strip() for line in out.out.splitlines())
    assert session.messages[0] == {"role": "system", "content": system}  # never dropped
    assert session.messages[-2] == {"role": "user", "content": questions[-1]}
    # after dropping, the cache holds a different conversation: the reply is still a fresh run's
    prompt = session._encode(session.messages[:-1])
    assert session.messages[-1]["content"] == llm.generate(prompt, temperature=0, max_tokens=24)


def test_a_message_too_long_for_the_context_is_an_error(chat_cli) -> None:  # type: ignore[no-untyped-def]
    result = chat_cli("chat", "-t", "0", "-n", "4", "--ctx", "64", input="word " * 100 + "\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("llama: error: this message makes a prompt of") and result.stderr.count("\n") == 1


def test_sandbox_refuses_a_template_that_reaches_for_python_internals(chat_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    evil = tmp_path / "evil.jinja"
    evil.write_text(EVIL_TEMPLATE)
    for args in (["chat", "--template", str(evil)], ["tokenize", "--chat", "--template", str(evil)]):
        result = chat_cli(*args, input='[{"role": "user", "content": "Hi"}]\n')
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.startswith("llama: error: chat template refused by the sandbox"), result.stderr
        assert result.stderr.count("\n") == 1  # one line, no traceback


def test_load_of_a_bad_file_keeps_the_session(tiny_llm, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    llm = tiny_llm
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    session = ChatSession(llm, greedy(llm, 4), messages=conversation)  # type: ignore[arg-type]
    repl = Repl(session)
    files = {
        "missing.json": None,
        "not-json.json": "[{'role': 'user'}",
        "not-a-list.json": '{"role": "user", "content": "Hi"}',
        "bad-role.json": '[{"role": "robot", "content": "Hi"}]',
        "unanswered.json": '[{"role": "user", "content": "Hi"}]',
        "nested-too-deeply.json": "[" * 100_000 + "]" * 100_000,  # RecursionError ended the session
    }
    for name, text in files.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert repl.command(f"/load {tmp_path / name}") is True
        err = capsys.readouterr().err
        assert err.startswith("llama: error: ") and err.count("\n") == 1, err
        assert "the conversation is unchanged" in err
        assert session.messages == conversation
    # a good file round-trips through /save and /load
    repl.command(f"/save {tmp_path / 'talk.json'}")
    session.reset()
    assert session.messages == conversation[:1]
    repl.command(f"/load {tmp_path / 'talk.json'}")
    assert session.messages == conversation
    assert "[loaded 3 messages" in capsys.readouterr().err


def test_reset_clears_stats_and_a_cut_reply_is_marked(tiny_llm, capsys) -> None:  # type: ignore[no-untyped-def]
    llm = tiny_llm
    repl = Repl(ChatSession(llm, greedy(llm, 4)))
    repl.reply("Tell me a long story.")
    assert "[the reply was cut at 4 tokens: raise -n for longer replies]" in capsys.readouterr().err
    repl.command("/stats")
    assert "turn 1:" in capsys.readouterr().err
    repl.command("/reset")
    repl.command("/stats")
    err = capsys.readouterr().err
    assert "turn 1:" not in err and "no turns yet" in err


def test_word_wrap_breaks_streamed_text_at_spaces() -> None:
    wrap = WordWrap(20)
    text = "The quick brown fox jumps over the lazy dog.\nA supercalifragilisticexpialidocious word."
    out = "".join(wrap.feed(text[i : i + 3]) for i in range(0, len(text), 3)) + wrap.flush()
    assert out.split("\n") == ["The quick brown fox ", "jumps over the lazy ", "dog.", "A ", "supercalifragilisticexpialidocious", "word."]


@pytest.mark.real_model
def test_tokenize_chat_marks_special_tokens(chat_cli, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "Hi"}]
    result = chat_cli("tokenize", "--chat", input=json.dumps(messages))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        f"[<|im_start|>]system\n{SMOLLM_SYSTEM}[<|im_end|>]\n[<|im_start|>]user\nHi[<|im_end|>]\n[<|im_start|>]assistant\n\n"
    )
    data = json.loads(chat_cli("tokenize", "--chat", "--json", input=json.dumps(messages)).stdout)
    assert data["ids"] == list(hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


@pytest.mark.real_model  # the reply is a numbered list: the default model's answer
def test_piped_json_gives_one_line_per_reply(chat_cli) -> None:  # type: ignore[no-untyped-def]
    result = chat_cli("chat", "-t", "0", "-n", "40", "--json", input="Name three colours as a numbered list.\n/reset\n")
    assert result.exit_code == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["turn"] for r in replies] == [1, 2]  # "/reset" from a pipe is a message, not a command
    assert "\n" in replies[0]["text"] and replies[0]["stop_reason"] in ("eos", "length")


@pytest.mark.real_model  # the default model answers from the history ("Ada")
def test_history_file_starts_the_conversation(chat_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    history = tmp_path / "talk.json"
    history.write_text(
        json.dumps([{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Nice to meet you, Ada!"}])
    )
    result = chat_cli("chat", "-t", "0", "-n", "12", "--history", str(history), input="What is my name?\n")
    assert result.exit_code == 0, result.stderr
    assert "Ada" in result.stdout and "[loaded 2 messages from" in result.stderr
    bad = chat_cli("chat", "--history", str(tmp_path / "nope.json"), input="Hi\n")
    assert bad.exit_code == 1 and bad.stderr.startswith("llama: error: cannot read")


# ---------------------------------------------------------------- the interactive REPL


@pytest.mark.real_model  # the default model answers "Paris"
def test_interactive_repl_under_a_terminal(tmp_path: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "LLAMA_CHAT_HISTORY": str(tmp_path / "history"), "TERM": "dumb", "COLUMNS": "200"}
    child = pexpect.spawn(
        sys.executable, ["-m", "llama_cli", "chat", "-t", "0", "-n", "400"], env=env, encoding="utf-8", timeout=60, dimensions=(50, 200)
    )
    child.logfile_read = io.StringIO()
    try:
        child.expect_exact(">>> ", timeout=180)  # the model loads first
        child.sendline("What is the capital of France?")
        child.expect_exact(">>> ")
        assert "Paris" in child.before

        child.sendline("/stats")
        child.expect(r"turn 1: prompt \d+ tokens \(0 from the cache")
        child.expect_exact(">>> ")

        child.sendline("Write a very long story about a dragon who bakes bread.")
        child.expect_exact("bakes bread.")  # the echo of the line
        child.expect(r"(\S+\s+){8}")  # the reply is streaming
        child.sendintr()
        child.expect_exact("[interrupted: the partial reply stays in the conversation, marked]")
        child.expect_exact(">>> ")

        child.sendline(f"/save {tmp_path / 'talk.json'}")
        child.expect_exact(">>> ")
        saved = json.loads((tmp_path / "talk.json").read_text())
        assert saved[-1]["interrupted"] is True and saved[-1]["role"] == "assistant" and saved[-1]["content"]

        child.sendline("Thank you!")
        child.expect_exact(">>> ")
        child.sendline("/stats")
        child.expect(r"turn 3: prompt \d+ tokens \((\d+) from the cache")
        assert int(child.match.group(1)) > 0
        child.expect_exact(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
        print(child.logfile_read.getvalue())  # shown by pytest when the test fails
    assert child.exitstatus == 0
    assert "Thank you!" in (tmp_path / "history").read_text()  # readline history is kept
