"""`llama summarize`, `translate` and `qa`: splitting and ranking on their own, then end to end.

End to end, the commands run on the tiny model (conftest.py: random weights, the default model's
tokenizer and chat template, given through $LLAMA_MODEL) where what is checked is what the command
does with text; the tests marked `real_model` check what the default model answers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama_cli.cli import app
from llama_cli.cli.render_presets import Trim
from llama_cli.presets.rank import bm25_scores, supporting_sentences, terms
from llama_cli.presets.split import pack, split_text, whole_sentences

DOCS = Path(__file__).parent / "data" / "presets"
runner = CliRunner()


def words(text: str) -> int:
    return len(text.split())


def run(*args: str, input: str | bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def events(output: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in output.splitlines()]


pytestmark = pytest.mark.usefixtures("tiny_unless_real")


# --- splitting, ranking, streaming: no model -------------------------------------------------


def assert_covers(chunks, text: str) -> None:  # type: ignore[no-untyped-def]
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    assert "".join(c.text for c in chunks) == text


def test_split_prefers_paragraphs_then_sentences() -> None:
    text = "One two three.\n\nFour five six seven.\n\n" + "Alpha beta gamma. Delta epsilon zeta. Eta theta iota kappa.\n"
    chunks = split_text(text, 7, words)
    assert_covers(chunks, text)
    assert [c.text.strip() for c in chunks] == [
        "One two three.",
        "Four five six seven.",
        "Alpha beta gamma. Delta epsilon zeta.",
        "Eta theta iota kappa.",
    ]
    assert all(c.tokens <= 7 for c in chunks)
    merged = split_text(text, 100, words)
    assert len(merged) == 1 and merged[0].tokens == words(text)


def test_split_keeps_paragraphs_apart_when_asked() -> None:
    text = "\n\nShort one.\n\nShort two.\n\n\nShort three.\n"
    chunks = split_text(text, 50, words, merge_paragraphs=False)
    assert_covers(chunks, text)
    assert [c.text for c in chunks] == ["\n\nShort one.\n\n", "Short two.\n\n\n", "Short three.\n"]


def test_split_keeps_lines_of_their_own_apart_and_wrapped_lines_together() -> None:
    text = "Good morning.\nWhere is\nthe station?\n- one\n- two\n\nRoses are red\nand violets blue:\nthe end.\n"
    chunks = split_text(text, 50, words, merge_paragraphs=False)
    assert_covers(chunks, text)
    assert [c.text for c in chunks] == [
        "Good morning.\n",
        "Where is\nthe station?\n",  # a sentence hard-wrapped over two lines stays one piece
        "- one\n",
        "- two\n\n",
        "Roses are red\nand violets blue:\n",
        "the end.\n",
    ]
    assert split_text(text, 50, words)[0].text == text  # summarize and qa merge as before


def test_translate_keeps_each_line_on_its_own_line() -> None:
    """Each line that is a unit of its own is translated on its own, so the output has the input's
    lines whatever the model writes (small models merge and drop lines when given them together)."""
    text = "Good morning.\nWhere is the station?\nThank you.\n\nGoodbye.\n"
    result = run("translate", "--to", "French", "-n", "6", input=text)
    assert result.exit_code == 0, result.stderr
    assert [bool(line) for line in result.stdout.split("\n")] == [True, True, True, False, True, False], result.stdout
    assert "3 chunks" not in result.stderr and "4 chunks" in result.stderr


def test_split_cuts_text_without_spaces_anywhere() -> None:
    text = "x" * 100
    chunks = split_text(text, 30, len)
    assert_covers(chunks, text)
    assert [len(c.text) for c in chunks] == [30, 30, 30, 10]


def test_pack_groups_consecutive_items() -> None:
    assert pack([3, 3, 3, 9, 1], 6) == [[0], [1], [2], [3], [4]]
    assert pack([3, 3, 3, 9, 1], 6, joiner=0) == [[0, 1], [2], [3], [4]]
    assert pack([1, 1, 1, 1], 5) == [[0, 1, 2], [3]]


def test_bm25_ranks_the_chunk_that_holds_the_answer() -> None:
    chunks = ["The bakery sells bread and cakes.", "The tower was completed in 1889 after two years of work.", "Visitors climb the stairs."]
    scores = bm25_scores("When was the tower completed?", chunks)
    assert max(range(3), key=scores.__getitem__) == 1
    assert scores[0] == 0.0
    assert terms("The towers were completed") == ["tower", "complet"]


def test_supporting_sentences_share_the_answer_words() -> None:
    context = (DOCS / "eiffel.txt").read_text()
    quotes = supporting_sentences("It was completed in 1889.", "When was the Eiffel Tower completed?", context)
    assert quotes and "completed in March 1889" in quotes[0]


def test_quotes_from_hard_wrapped_text_are_whole_sentences() -> None:
    context = (
        "Everyone is permitted to copy and distribute verbatim copies\nof this license document, but changing it is not allowed.\n\n"
        "You may charge a fee for the physical act of transferring a copy,\n"
        "and you may at your option offer warranty protection\nin exchange for a fee.\n"
        "Steps:\n- keep the notice\n- give a copy\n"
    )
    quotes = supporting_sentences("You may charge a fee for transferring a copy.", "Can I charge a fee?", context)
    assert quotes[0] == (
        "You may charge a fee for the physical act of transferring a copy, "
        "and you may at your option offer warranty protection in exchange for a fee."
    )
    assert supporting_sentences("Keep the notice.", "What are the steps?", context) == ["- keep the notice"]  # list items stay apart


def test_trim_streams_without_outer_whitespace() -> None:
    trim = Trim()
    pieces = ["\n", " Hello", " world", "\n", "\n", "again", " \n"]
    assert "".join(trim.feed(p) for p in pieces) == "Hello world\n\nagain"


# --- errors before the model is loaded ---------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_MODEL", "/nonexistent/model.gguf")  # reaching the model would be a different error


def assert_one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", [["summarize"], ["translate", "--to", "French"], ["qa", "What?"]])
def test_empty_binary_and_unreadable_inputs_are_one_line_errors(command: list[str], tmp_path: Path, no_model: None) -> None:
    empty, binary, latin1 = tmp_path / "empty.txt", tmp_path / "image.png", tmp_path / "latin1.txt"
    empty.write_text(" \n\n")
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    flag = ["--context"] if command[0] == "qa" else []
    assert_one_line_error(run(*command, input=""), "empty")
    assert_one_line_error(run(*command, *flag, str(empty)), "empty")
    assert_one_line_error(run(*command, *flag, str(binary)), "binary")
    assert_one_line_error(run(*command, input=b"\x00\x01\x02binary"), "binary")
    assert_one_line_error(run(*command, *flag, str(latin1)), "UTF-8")
    assert_one_line_error(run(*command, *flag, str(tmp_path / "missing.txt")), "cannot read", "missing.txt")
    assert_one_line_error(run(*command, *flag, str(tmp_path)), "cannot read")


def test_bad_options_are_usage_errors(no_model: None) -> None:
    assert_one_line_error(run("summarize", "--length", "tiny", input="Some text."), "--length")
    assert_one_line_error(run("summarize", "--words", "0", input="Some text."), "--words")
    assert_one_line_error(run("translate", "--to", " ", input="Some text."), "--to")
    assert_one_line_error(run("qa", " ", input="Some text."), "question")
    assert run("summarize", "-t", "-1", input="Some text.").exit_code == 2
    assert run("translate", input="Some text.").exit_code == 2  # --to is required


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.real_model
def test_summarize_from_a_pipe_and_from_files() -> None:
    doc = DOCS / "report.txt"
    piped = run("summarize", "--length", "short", input=doc.read_text())
    from_file = run("summarize", "--length", "short", str(doc))
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout == from_file.stdout and piped.stdout.endswith("\n")
    summary = piped.stdout.strip()
    assert summary and len(summary) < len(doc.read_text()) and "Northwind" in summary
    both = run("summarize", "--length", "short", "--json", str(doc), str(DOCS / "story.txt"))
    done = events(both.stdout)[-1]
    assert done["event"] == "done" and done["preset"] == "summarize" and done["steps"] == 1
    assert done["chunks"][0]["end"] == len(doc.read_text()) + 2 + len((DOCS / "story.txt").read_text())


@pytest.mark.real_model
def test_translate_from_a_pipe_and_from_files_keeps_the_layout(tmp_path: Path) -> None:
    text = "Good morning.\n\nWhere is the station?\n"
    piped = run("translate", "--to", "French", input=text)
    path = tmp_path / "two.txt"
    path.write_text(text)
    from_file = run("translate", "--to", "French", "--from", "English", str(path))
    assert piped.exit_code == 0 and from_file.exit_code == 0, piped.stderr
    for result in (piped, from_file):
        paragraphs = result.stdout.split("\n\n")
        assert len(paragraphs) == 2 and result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")
        assert "Where is" not in result.stdout  # translated, not echoed
    assert "Bonjour" in piped.stdout


@pytest.mark.real_model
def test_qa_answers_from_a_context_file_and_from_a_pipe() -> None:
    question = "In what year was the Eiffel Tower completed?"
    from_file = run("qa", question, "--context", str(DOCS / "eiffel.txt"))
    assert from_file.exit_code == 0, from_file.stderr
    assert "1889" in from_file.stdout
    piped = run("qa", question, input=(DOCS / "eiffel.txt").read_text())
    assert piped.stdout == from_file.stdout
    quoted = run("qa", "--quote", question, "--context", str(DOCS / "eiffel.txt"))
    quotes = [line for line in quoted.stdout.splitlines() if line.startswith("> ")]
    assert quotes and any("completed in March 1889" in q for q in quotes)


def test_qa_says_it_cannot_tell_when_the_context_lacks_the_question_words() -> None:
    result = run("qa", "--json", "What is the population of Berlin?", "--context", str(DOCS / "eiffel.txt"))
    assert result.exit_code == 0, result.stderr
    done = events(result.stdout)[-1]
    assert done["text"] == "I cannot tell from the context." and done["steps"] == 0
    assert "berlin, population" in result.stderr
    plain = run("qa", "What is the population of Berlin?", input=(DOCS / "eiffel.txt").read_text())
    assert plain.exit_code == 0 and plain.stdout == "I cannot tell from the context.\n"
    shown = run("qa", "--show-prompt", "What is the population of Berlin?", "--context", str(DOCS / "eiffel.txt"))
    assert "Question: What is the population of Berlin?" in shown.stdout  # the recipe is still shown


@pytest.mark.real_model
def test_qa_ranks_chunks_when_the_context_does_not_fit() -> None:
    context = "\n\n".join((DOCS / name).read_text() for name in ("harbour.txt", "report.txt", "eiffel.txt", "story.txt"))
    result = run("qa", "--ctx", "256", "-n", "48", "--json", "In what year was the Eiffel Tower completed?", input=context)
    assert result.exit_code == 0, result.stderr
    done = events(result.stdout)[-1]
    chunks = done["chunks"]
    assert len(chunks) > 3 and "does not fit" in result.stderr
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(context)
    used = [c for c in chunks if c["steps"]]
    assert 0 < len(used) < len(chunks) and max(chunks, key=lambda c: c["score"])["steps"] == [0]
    answer_chunk = next(c for c in chunks if "completed in March 1889" in context[c["start"] : c["end"]])
    assert answer_chunk["steps"] == [0] and answer_chunk["score"] > 0
    assert "1889" in done["text"]


def test_show_prompt_prints_the_rendered_prompt_without_running() -> None:
    result = run("summarize", "--show-prompt", "--bullets", "--focus", "costs", str(DOCS / "report.txt"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("<|im_start|>system\n") and result.stdout.rstrip().endswith("<|im_start|>assistant")
    assert "12,400 bicycles" in result.stdout and "focusing on costs" in result.stdout and "bulleted" in result.stdout
    qa = run("qa", "--show-prompt", "Who built it?", "--context", str(DOCS / "eiffel.txt"))
    assert "Question: Who built it?" in qa.stdout and "Gustave Eiffel" in qa.stdout
    long = run("translate", "--to", "German", "--show-prompt", "--ctx", "256", str(DOCS / "harbour.txt"))
    assert long.stdout.count("--- prompt ") == long.stdout.count("<|im_start|>assistant") > 3


@pytest.mark.real_model
def test_bullets_are_asked_for_alone_and_come_as_bullets() -> None:
    prompt = run("summarize", "--show-prompt", "--bullets", str(DOCS / "report.txt")).stdout
    assert "Write a bulleted list of four to six points" in prompt and "paragraph" not in prompt
    result = run("summarize", "--bullets", str(DOCS / "report.txt"))
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and len(lines) >= 2 and all(line.startswith("- ") for line in lines), result.stdout


def test_common_options_behave_as_in_generate() -> None:
    doc = str(DOCS / "story.txt")
    capped = events(run("summarize", "-n", "12", "--json", doc).stdout)
    assert capped[-1]["generated_tokens"] <= 12 and capped[-1]["stop_reason"] == "length"
    assert all(e["event"] in ("token", "step", "done") for e in capped)
    a = run("summarize", "-t", "0.9", "--seed", "5", "-n", "24", doc)
    b = run("summarize", "-t", "0.9", "--seed", "5", "-n", "24", doc)
    assert a.exit_code == 0 and a.stdout == b.stdout
    stats = run("summarize", "-n", "16", "--stats", doc)
    assert "summarize: 1 chunk(s), 1 step(s)" in stats.stderr and "tok/s" in stats.stderr and "tok/s" not in stats.stdout
    missing = run("summarize", "-m", "/nonexistent/model.gguf", doc)
    assert missing.exit_code == 1 and "no model file or folder" in missing.stderr


def test_whole_sentences() -> None:
    assert whole_sentences("One. Two is cut") == "One."
    assert whole_sentences('He said "hi." Then') == 'He said "hi."'
    assert whole_sentences("- a\n- b\n- c is") == "- a\n- b"
    assert whole_sentences("Version 2.0 is") == "Version 2.0 is"  # a decimal point is no sentence end
    assert whole_sentences("no end at all") == "no end at all"  # nothing to cut back to: kept


@pytest.mark.real_model
def test_an_answer_cut_at_n_ends_at_a_whole_sentence() -> None:
    doc = str(DOCS / "report.txt")
    plain = run("summarize", "-n", "60", doc)
    data = events(run("summarize", "-n", "60", "--json", doc).stdout)[-1]
    assert plain.exit_code == 0 and data["stop_reason"] == "length"
    assert plain.stdout == data["text"] + "\n" and data["text"].endswith(".")
    assert "ends at its last whole sentence" in plain.stderr


def test_no_repeat_ngram_never_repeats_a_run_of_generated_tokens(tiny_llm) -> None:  # type: ignore[no-untyped-def]
    llm = tiny_llm
    from llama_cli.api import make_settings
    from llama_cli.generation import Generation

    ids = llm.encode_chat([{"role": "user", "content": "Repeat the word 'dog' fifty times."}])
    generation = Generation(llm.model, llm.tokenizer, ids, make_settings(temperature=0, max_tokens=40, no_repeat_ngram=3))
    for _ in generation:
        pass
    tokens = generation.results[0].token_ids
    runs = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    assert len(tokens) > 3 and len(set(runs)) == len(runs), llm.tokenizer.decode(tokens)


@pytest.mark.real_model
def test_lookup_is_on_where_it_keeps_the_text() -> None:
    doc = str(DOCS / "eiffel.txt")
    fast = events(run("summarize", "--dtype", "float32", "-n", "48", "--json", doc).stdout)[-1]
    plain = events(run("summarize", "--dtype", "float32", "-n", "48", "--json", "--lookup", "0", doc).stdout)[-1]
    assert fast["text"] == plain["text"]
    assert fast["accepted_tokens"] > 0 and plain["drafted_tokens"] == 0
    int4 = events(run("summarize", "-n", "8", "--json", doc).stdout)[-1]  # the fast path: off unless asked
    assert int4["drafted_tokens"] == 0


# --- inputs longer than the context ------------------------------------------------------------


def long_document() -> tuple[str, int]:
    text = (DOCS / "harbour.txt").read_text()
    from llama_cli.cli.loader import ModelLoader, ModelOptions

    return text, len(ModelLoader().load(ModelOptions()).tokenizer.encode(text))


def test_summarize_maps_every_chunk_and_reduces() -> None:
    text, tokens = long_document()
    ctx = 224
    assert tokens >= 2.5 * ctx
    result = run("summarize", "--ctx", str(ctx), "-n", "32", "--json", "--stats", input=text)
    assert result.exit_code == 0, result.stderr
    records = events(result.stdout)
    done, steps = records[-1], [r for r in records if r["event"] == "step"]
    chunks = done["chunks"]
    assert len(chunks) >= 3
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(text)
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(chunks))  # every character in some chunk
    maps = [s for s in steps if s["stage"] == "map"]
    assert [s["chunks"] for s in maps] == [[c["index"]] for c in chunks]  # each chunk summarized once, in order
    assert all(s["generated_tokens"] > 0 and s["text"] for s in maps)
    assert steps[-1]["stage"] == "reduce" and steps[-1]["final"] and done["text"] == steps[-1]["text"]
    assert all(c["steps"] for c in chunks)
    assert f"{len(chunks)} chunk(s)" in result.stderr and "chunk 1 of" in result.stderr  # progress and stats


@pytest.mark.real_model
def test_translate_covers_every_chunk_in_order() -> None:
    text, tokens = long_document()
    ctx = 224
    result = run("translate", "--to", "French", "--ctx", str(ctx), "-n", "12", "--json", input=text)
    assert result.exit_code == 0, result.stderr
    records = events(result.stdout)
    done, steps = records[-1], [r for r in records if r["event"] == "step"]
    chunks = done["chunks"]
    assert len(chunks) > tokens // ctx
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(text)
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(chunks))
    assert [s["chunks"] for s in steps] == [[c["index"]] for c in chunks]
    assert all(s["generated_tokens"] > 0 and s["text"] for s in steps)
    # the output is the translations in order, with the input's own blank lines and line breaks between them
    output = done["text"]
    assert output.count("\n\n") == text.count("\n\n")
    position = 0
    for step in steps:
        position = output.index(step["text"], position)
    assert "stopped at -n 12 tokens" in result.stderr  # -n 12 cut some paragraphs: said, not silent
    plain = run("translate", "--to", "French", "--ctx", str(ctx), "-n", "12", input=text)
    assert plain.stdout == (output if output.endswith("\n") else output + "\n")


def test_tiny_context_is_refused_not_truncated() -> None:
    text, _ = long_document()
    result = run("summarize", "--ctx", "128", "-n", "64", input=text)
    assert result.exit_code == 2 and "--ctx" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_long_input_says_how_much_work_and_max_chunks_caps_it(llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    document = tmp_path / "long.txt"
    document.write_text("\n\n".join(f"Paragraph {i}: the harbour wall was repaired in stone and lime." for i in range(60)))
    refused = llama("summarize", "--ctx", "256", "-n", "8", "--max-chunks", "2", document)
    assert refused.exit_code == 2, refused.stderr
    assert refused.stderr.startswith("llama: error: the input splits into ") and "more than --max-chunks 2" in refused.stderr
    assert "raise --max-chunks to " in refused.stderr and refused.stdout == ""
    ran = llama("summarize", "--ctx", "256", "-n", "8", document)
    assert ran.exit_code == 0, ran.stderr
    assert "chunks: a summary of each, then " in ran.stderr and "steps in all, each up to 8 tokens" in ran.stderr
    translated = llama("translate", "--to", "French", "--ctx", "256", "-n", "8", "--max-chunks", "3", document)
    assert translated.exit_code == 2 and "more than --max-chunks 3" in translated.stderr
