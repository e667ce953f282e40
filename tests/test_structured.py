"""Structured output: schema.py's checks (no model), then --schema/--choice/--regex end to end on the default model
(`real_model`: a random model never closes a JSON value of its own accord)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llama_cli.cli import app
from llama_cli.errors import UsageError
from llama_cli.schema import concise_schema, read_schema, spec_from_options, spec_from_response_format

runner = CliRunner()


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


# --- specs, without a model ----------------------------------------------------------------------


def test_concise_schema_follows_llm() -> None:
    assert concise_schema("name, age int, bio: one sentence") == {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "bio": {"type": "string", "description": "one sentence"}},
        "required": ["name", "age", "bio"],
        "additionalProperties": False,
    }
    by_lines = concise_schema("title str: the title, with commas\nscore float\nok bool")
    assert list(by_lines["properties"]) == ["title", "score", "ok"]
    assert by_lines["properties"]["title"]["description"] == "the title, with commas"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age integr", "unknown type 'integr'"),
        ("a, a int", "given twice"),
        (" , ", "no fields"),
        ("one two three", "cannot read the field"),
    ],
)
def test_concise_schema_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        concise_schema(text)


def test_schema_from_file_and_inline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "person.json"
    path.write_text('{"type": "object", "properties": {"x": {"type": "integer"}}}')
    assert read_schema(str(path))["properties"]["x"] == {"type": "integer"}
    assert read_schema('{"type": "string"}') == {"type": "string"}
    with pytest.raises(UsageError, match="not valid JSON"):
        read_schema('{"type": ')
    with pytest.raises(UsageError, match="cannot read"):
        read_schema(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schema": '{"type": "object", "properties": {"a": {"not": {"type": "string"}}}}'}, 'Unimplemented keys: \\["not"\\]'),
        ({"schema": '{"type": "string", "format": "zipcode"}'}, "Unknown format: zipcode"),
        ({"schema": '{"type": "string", "pattern": "[a-"}'}, "unclosed character class"),
        ({"regex": "(ab"}, "^regex: .*unclosed group"),
        ({"choice": "yes,,no"}, "^choice: give non-empty items"),
        ({"regex": "a", "choice": "b"}, "^regex and choice cannot be combined"),
    ],
)
def test_what_cannot_be_honoured_is_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as error:
        spec_from_options(**options)
    assert "\n" not in str(error.value)


def test_grammar_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "yn.lark"
    good.write_text('start: "yes" | "no"\n')
    assert spec_from_options(grammar=str(good)).kind == "grammar"  # type: ignore[union-attr]
    gbnf = tmp_path / "yn.gbnf"
    gbnf.write_text('root ::= "yes" | "no"\n')
    assert spec_from_options(grammar=str(gbnf)).kind == "grammar"  # type: ignore[union-attr]
    bad = tmp_path / "bad.lark"
    bad.write_text("start: missing_rule\n")
    with pytest.raises(UsageError, match="^grammar: .*unknown name"):
        spec_from_options(grammar=str(bad))


def test_response_format_for_a_server() -> None:
    assert spec_from_response_format({"type": "text"}) is None
    assert spec_from_response_format({"type": "json_object"}).schema == {"type": "object"}  # type: ignore[union-attr]
    spec = spec_from_response_format(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
    )
    assert spec is not None and spec.kind == "json"
    assert spec_from_response_format({"type": "choice", "choice": ["a", "b"]}).choices == ("a", "b")  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="response_format"):
        spec_from_response_format({"type": "xml"})


def test_usage_error_comes_before_the_model_and_torch() -> None:
    code = (
        "import sys\n"
        "from llama_cli.cli import main\n"
        "sys.argv = ['llama', 'generate', '-m', '/no/such/model.gguf', '--schema', '{\"type\": \"object\", \"if\": {}}', 'hi']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"]
    assert result.stderr.strip() == 'llama: error: --schema: Unimplemented keys: ["if"]'


# --- on the default model -------------------------------------------------------------------------


@pytest.mark.real_model
def test_schema_gives_json_alone() -> None:
    result = run("generate", "-t", "0", "-n", "60", "--chat", "--schema", "name, age int", "Invent a person.")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.endswith("}\n") and result.stdout.count("\n") == 1
    data = json.loads(result.stdout)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)


@pytest.mark.real_model
def test_json_done_event_carries_data_and_samples_each_match() -> None:
    result = run(
        "generate",
        "-t",
        "0.9",
        "--seed",
        "3",
        "--samples",
        "2",
        "-n",
        "40",
        "--json",
        "--chat",
        "--choice",
        "red,green,blue",
        "Pick a colour.",
    )
    assert result.exit_code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["data"] in ("red", "green", "blue") and done["complete"] is True
    assert all(s["data"] == s["text"] and s["text"] in ("red", "green", "blue") for s in done["samples"])


@pytest.mark.real_model
def test_cut_by_max_tokens_is_an_error_unless_allowed() -> None:
    # Too few tokens for even the shortest object with both keys, so the value cannot be closed in time.
    args = ("generate", "-t", "0", "-n", "4", "--chat", "--schema", "name, age int", "Invent a person.")
    cut = run(*args)
    assert cut.exit_code == 1
    assert "stopped at -n 4 tokens inside the --schema value, so it is not valid" in cut.stderr
    kept = run(*args, "--truncate-ok", "--json")
    assert kept.exit_code == 0
    done = json.loads(kept.stdout.splitlines()[-1])
    assert done["complete"] is False and done["data"] is None and done["stop_reason"] == "length"
    assert "warning" in kept.stderr


@pytest.mark.real_model
def test_logprobs_are_before_the_constraint() -> None:
    result = run("generate", "-t", "0", "-n", "8", "--json", "--logprobs", "5", "--regex", "zebra", "The capital of France is")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["text"] == "zebra"
    alternatives = [a["token"] for a in events[0]["top_logprobs"]]
    assert not all("zebra".startswith(a) for a in alternatives)  # the model's own favourites, not the allowed ones


@pytest.mark.real_model
def test_schema_prompt_is_shown_unless_turned_off() -> None:
    def prompt_tokens(*extra: str) -> int:
        result = run("generate", "-t", "0", "-n", "1", "--truncate-ok", "--json", "--chat", "--schema", "name, age int", *extra, "Hi")
        return json.loads(result.stdout.splitlines()[-1])["prompt_tokens"]

    spec = spec_from_options(schema="name, age int")
    assert spec is not None and '"age":{"type":"integer"}' in spec.prompt_note()
    assert prompt_tokens() > prompt_tokens("--no-schema-prompt")


@pytest.mark.real_model
def test_lookup_gives_the_same_text_and_drafts_forced_tokens(llm) -> None:  # type: ignore[no-untyped-def]
    spec = spec_from_options(schema="city")
    options = {"chat": True, "system": spec.prompt_note(), "temperature": 0, "max_tokens": 16, "constraint": spec}  # type: ignore[union-attr]
    plain = llm.stream("What is the capital of France?", **options)
    drafted = llm.stream("What is the capital of France?", lookup=6, **options)
    assert "".join(e.text for e in plain) == "".join(e.text for e in drafted)
    assert plain.results[0].complete and json.loads(plain.text)["city"]
    assert drafted.stats.drafted_tokens > 0 and drafted.stats.accepted_tokens > 0


@pytest.mark.real_model
def test_chat_replies_follow_the_constraint() -> None:
    result = run("chat", "-t", "0", "-n", "24", "--choice", "yes,no", input="Is Paris in France?\nIs the sea dry?\n")
    assert result.exit_code == 0, result.stderr
    assert all(line in ("yes", "no") for line in result.stdout.splitlines()) and len(result.stdout.splitlines()) == 2


@pytest.mark.real_model
def test_presets_give_data_with_json() -> None:
    docs = "tests/data/presets/"
    no_answer = run("qa", "--json", "What is the population of Berlin?", "--context", docs + "eiffel.txt")
    assert json.loads(no_answer.stdout.splitlines()[-1])["data"] == {"answer": "I cannot tell from the context.", "quotes": []}
    notes = "The launch moved to Friday. Anna will bring the slides. The budget was approved at 40,000 euros.\n"
    summary = run("summarize", "--bullets", "--json", "--length", "short", "-n", "120", input=notes)
    assert summary.exit_code == 0, summary.stderr
    done = json.loads(summary.stdout.splitlines()[-1])
    assert done["data"]["points"] and all(isinstance(p, str) and p for p in done["data"]["points"])
    lines = done["text"].splitlines()  # a last line cut by -n is left out of the data
    assert lines[: len(done["data"]["points"])] == [f"- {p}" for p in done["data"]["points"]]


def test_a_sentencepiece_vocabulary_is_bridged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sentencepiece

    from llama_cli.constraints import Constraint
    from llama_cli.tokenizer import SentencePieceTokenizer, SpecialTokens

    (tmp_path / "corpus.txt").write_text("\n".join(['{"name": "Ann", "age": 31}', "The quick brown fox jumps over the lazy dog."] * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"),
        model_prefix=str(tmp_path / "m"),
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
    )
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    tokenizer = SentencePieceTokenizer(sp, SpecialTokens(sp.bos_id(), sp.eos_id(), frozenset({sp.eos_id()}), add_bos=True))
    rule = Constraint(spec_from_options(schema="name, age int"), tokenizer, 304).matcher()  # type: ignore[arg-type]
    space = sp.piece_to_id("\u2581")
    assert not rule.allowed()[space]  # JSON may not start with a space (sentencepiece's dummy prefix)
    for token in tokenizer.encode('{"name": "Ann", "age": 31}', bos=False)[1:]:  # without that prefix
        rule.advance(token)
    assert rule.complete and rule.allowed()[sp.eos_id()] and rule.allowed().sum() == 1


@pytest.mark.real_model
def test_no_repeat_ngram_yields_to_forced_tokens(llm) -> None:  # type: ignore[no-untyped-def]
    items = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": False}
    spec = spec_from_options(
        schema=json.dumps({"type": "array", "items": items, "minItems": 3})
    )  # each item repeats the forced '{"name": "'
    generation = llm.stream("List four people.", chat=True, temperature=0, max_tokens=40, constraint=spec, no_repeat_ngram=2)
    text = "".join(event.text for event in generation)
    assert text.startswith('[{"name": "') and text.count('{"name": "') >= 2


@pytest.mark.real_model
def test_a_value_that_would_run_past_the_budget_is_closed_in_time(fast_llm) -> None:  # type: ignore[no-untyped-def]
    llm = fast_llm
    spec = spec_from_options(schema_multi="name, color, description: a long paragraph")
    options = {"chat": True, "system": spec.prompt_note(), "temperature": 0, "constraint": spec}  # type: ignore[union-attr]

    def text(prompt: str, max_tokens: int) -> tuple[str, int, bool | None]:
        stream = llm.stream(prompt, max_tokens=max_tokens, **options)
        out = "".join(e.text for e in stream)
        return out, len(stream.results[0].token_ids), stream.results[0].complete

    tight, used, complete = text("List twenty fruits, each with a long description.", 40)
    assert complete and used <= 40 and isinstance(json.loads(tight), list)
    # A value that ends well before the budget is never touched: the same text with more room to spare.
    roomy = [text("Name one fruit.", n) for n in (100, 160)]
    assert roomy[0] == roomy[1] and roomy[0][2] and json.loads(roomy[0][0])
