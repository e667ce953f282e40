"""The CLI's own conversion of plain option values (cli/coercion.py) against typer's pydantic one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import run_llama
from typer._click import Context
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from llama_cli.cli.app import root_command
from llama_cli.cli.coercion import PlainValues

TEXTS = ["0", "7", "-3", "+5", "007", " 12 ", "1_000", "1.0", "1.", ".5", "+.5", "-0", "1e3", "1E-3", "1e99", "1e999", "inf", "nan"]
TEXTS += ["abc", "", "0x10", "12345678901234567890", "٣", "true", "auto", "--x"]
VALUES: list[Any] = [None, *TEXTS, 5, 0, -2, 2.5, 0.0, True, False]


def commands(group: Any, path: str = "llama") -> Iterator[tuple[str, Any]]:
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if hasattr(command, "commands"):
            yield from commands(command, f"{path} {name}")


def outcome(convert: Any, value: Any, param: Any, ctx: Context) -> tuple[str, str]:
    try:
        result = convert.coerce(value, param=param, ctx=ctx)
    except BadParameter as error:
        return "refused", error.format_message()
    return type(result).__name__, repr(result)


def test_plain_values_convert_as_typer_does_for_every_parameter() -> None:
    checked = 0
    for path, command in commands(root_command()):
        ctx = Context(command, info_name=path)
        for param in [*command.params, command.get_help_option(ctx)]:
            plain = getattr(param, "_runtime_param", None)
            if not isinstance(plain, PlainValues):
                continue
            typer_own = build_runtime_param(param.type_descriptor)
            values = [(), ("a", "7"), ("1.5",)] if param.multiple else VALUES
            for value in values:
                assert outcome(plain, value, param, ctx) == outcome(typer_own, value, param, ctx), (path, param.name, value)
                checked += 1
    assert checked > 1000  # every command's str, int, float and flag options took part


@pytest.mark.parametrize("args", [["generate", "-n", "x"], ["generate", "-t", "hot"], ["generate", "--seed", "1.5"]])
def test_a_refused_value_keeps_typers_message(args: list[str]) -> None:
    result = run_llama(*args, "hello")
    assert result.exit_code == 2
    assert result.stderr.startswith("llama: error: Invalid value for") and "valid" in result.stderr
