"""Settings checked without torch: library errors name fields, the CLI names its flags, defaults live once."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from llama_cli.cli import app
from llama_cli.errors import UsageError
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
