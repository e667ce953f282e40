"""Settings checked without torch: library errors name fields, the CLI names its flags, defaults live once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llama_cli.cli import app
from llama_cli.errors import LlamaError, UsageError
from llama_cli.settings import GenerationSettings, SamplingSettings, SettingsError, make_settings

runner = CliRunner()


@pytest.mark.parametrize(
    ("options", "library", "cli_args", "cli"),
    [
        ({"temperature": -1}, "temperature must be >= 0", ["-t", "-1"], "--temperature must be >= 0"),
        ({"repetition_penalty": 0}, "repetition_penalty must be > 0", ["--repeat-penalty", "0"], "--repeat-penalty must be > 0"),
        ({"max_tokens": 0}, "max_tokens must be >= 1", ["-n", "0"], "--max-tokens must be >= 1"),
        ({"temperature": float("inf")}, "temperature must be >= 0 (0 = greedy) and finite", ["-t", "inf"], "--temperature must be >= 0"),
        (
            {"frequency_penalty": float("nan")},
            "frequency_penalty must be a finite",
            ["--frequency-penalty", "nan"],
            "--frequency-penalty must",
        ),
        (
            {"presence_penalty": float("-inf")},
            "presence_penalty must be a finite",
            ["--presence-penalty", "-inf"],
            "--presence-penalty must",
        ),
        ({"seed": 2**80}, "seed must be between 0 and", ["--seed", str(2**80)], "--seed must be between 0 and"),
        (
            {"seed": 2**63 - 1, "samples": 2},
            "seed must be between 0 and 9223372036854775806",
            ["--seed", str(2**63 - 1), "--samples", "2"],
            "--seed",
        ),
        ({"logprobs": 10**6}, "logprobs must be between 0 and 100", ["--logprobs", "1000000"], "--logprobs must be between"),
        ({"samples": 10**6}, "samples must be between 1 and 1024", ["--samples", "1000000"], "--samples must be between 1 and 1024"),
        ({"lookup": 10**9}, "lookup must be between 0 (off) and 64", ["--lookup", "1000000000"], "--lookup must be between"),
        (
            {"lookup": 2, "samples": 2},
            "lookup works with one sample; drop samples or lookup",
            ["--lookup", "2", "--samples", "2"],
            "--lookup works with one sample; drop --samples or --lookup",
        ),
    ],
)
def test_library_errors_name_fields_and_the_cli_names_flags(options: dict[str, int], library: str, cli_args: list[str], cli: str) -> None:
    with pytest.raises(SettingsError) as error:
        make_settings(**options)
    assert str(error.value).startswith(library) and "--" not in str(error.value)
    assert isinstance(error.value, UsageError)  # exit 2 wherever it surfaces
    result = runner.invoke(app, ["generate", *cli_args, "text"])
    assert result.exit_code == 2 and result.stderr.startswith(f"llama: error: {cli}"), result.stderr


def test_a_value_with_braces_is_not_a_field() -> None:
    assert SettingsError("{device} x{{y}}: no such device").render({"device": "--device"}) == "--device x{y}: no such device"


def test_the_sampling_defaults_are_the_settings_defaults() -> None:
    shown = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).stdout
    sampling = SamplingSettings()
    for flag, default in [
        ("--temperature", sampling.temperature),
        ("--top-k", sampling.top_k),
        ("--top-p", sampling.top_p),
        ("--min-p", sampling.min_p),
        ("--max-tokens", GenerationSettings.max_tokens),
    ]:
        line = next(line for line in shown.splitlines() if flag in line)
        assert f"[default: {default}]" in line, line


def _library_failures() -> list[tuple[str, Callable[[], object], str, list[str], str]]:
    """(what, a library call, its message, CLI args that reach the same check, the CLI's message)."""
    from llama_cli import chat, chat_template, data, distributed, finetune, generation, lora, perplexity, schema, trainer
    from llama_cli.presets import recipes
    from llama_cli.train_settings import LoopSettings

    loop = LoopSettings()
    return [
        ("schema", lambda: schema.spec_from_options(schema="a b c"), "schema: cannot read the field 'a b c'",
         ["generate", "--schema", "a b c", "x"], "--schema: cannot read the field 'a b c'"),
        ("choice", lambda: schema.spec_from_options(choice="yes,,no"), "choice: give non-empty items separated by commas, e.g. choice yes",
         ["generate", "--choice", "yes,,no", "x"], "--choice: give non-empty items separated by commas, e.g. --choice yes"),
        ("combined", lambda: schema.spec_from_options(schema="a", json_object=True), "schema and json_object cannot be combined",
         ["generate", "--schema", "a", "--json-output", "x"], "--schema and --json-output cannot be combined"),
        ("template", lambda: chat_template.template_text(None, "nope"), "unknown template 'nope'; choose auto, chatml",
         ["generate", "--template", "nope", "x"], "unknown --template 'nope'; choose auto, chatml"),
        ("chat ctx", lambda: chat.ChatSession(None, GenerationSettings(), context=1), "context must be at least 2, got 1",  # type: ignore[arg-type]
         ["chat", "--ctx", "1"], "--ctx must be at least 2, got 1"),
        ("perplexity ctx", lambda: perplexity.windows([1, 2, 3], 1), "ctx must be at least 2 for perplexity, got 1",
         ["perplexity", "--ctx", "1", __file__], "--ctx must be at least 2 for perplexity, got 1"),
        ("budget", lambda: generation.context_budget(100, 50, 64),
         ("prompt of 100 tokens plus max_tokens 50 exceeds the context window of 64 tokens; shorten the prompt, lower max_tokens, or "
          "set truncate"),
         ["generate", "--ctx", "64", "-n", "50", "word " * 100], "plus --max-tokens 50 exceeds the context window of 64 tokens"),
        ("resume", lambda: trainer.saved_settings(Path("/no/run"), "train.json", "training"), "resume: /no/run holds no training run",
         ["train", "--resume", "--out", "/no/run"], "--resume: /no/run holds no training run"),
        ("resume changes", lambda: trainer.check_resumable(loop, dataclasses.replace(loop, batch_size=4, lr=0.5)),
         "resume with different settings: batch_size 4 (checkpoint: 16); lr 0.5", [], ""),
        ("lora", lambda: lora.LoRAConfig(rank=0), "rank must be at least 1, got 0",
         ["finetune", "--lora-rank", "0", __file__, "--out", "/no/run"], "--lora-rank must be at least 1, got 0"),
        ("examples", lambda: finetune.split_examples([], 0.1, 0), "need at least 2 examples: one or more to train on",
         [], ""),
        ("val fraction", lambda: data.split_holdout(torch.zeros(64, dtype=torch.int64), 1.5, 4), "val_fraction must be between 0 and 1",
         [], ""),
        ("device", lambda: distributed.init_distributed("foo"), "unknown device 'foo'",
         ["train", "--device", "foo", __file__], "unknown --device 'foo'; choose auto, cpu, cuda, cuda:N or mps"),
        ("translate", lambda: recipes.translate_fields(target=" "), "target needs a language, e.g. target French",
         ["translate", "--to", " ", "x"], "--to needs a language, e.g. --to French"),
        ("words", lambda: recipes.summary_fields(words=0), "words must be >= 1, got 0",
         ["summarize", "--words", "0", "x"], "--words must be >= 1"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(15))
def test_library_errors_elsewhere_name_fields_too(case: int, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> None:
    what, call, library, cli_args, cli = _library_failures()[case]
    with pytest.raises(LlamaError) as error:
        call()
    assert str(error.value).startswith(library) and "--" not in str(error.value), what
    if cli_args:
        monkeypatch.setenv("LLAMA_MODEL", str(tiny_model_path))  # chat's context and the budget are checked once it has loaded
        result = runner.invoke(app, cli_args)
        assert result.exit_code in (1, 2) and result.stderr.startswith("llama: error: "), result.stderr
        assert cli in result.stderr, (what, result.stderr)
