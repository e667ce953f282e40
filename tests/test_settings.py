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
