"""A run of one command parses with an app of that command alone (cli/app.py `app_for`): the same help, errors and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from llama_cli.cli.app import COMMANDS, app, app_for

NAMES = [typer.main.get_command_name(c.name or c.callback.__name__) for c in app.registered_commands]  # type: ignore[union-attr]
NAMES += [g.name for g in app.registered_groups if g.name]


def test_every_command_and_group_has_an_app_of_its_own() -> None:
    assert len(NAMES) > 15 and "generate" in NAMES and "cache" in NAMES
    for name in NAMES:
        alone = app_for([name, "--help"])
        assert alone is not app and len(alone.registered_commands) + len(alone.registered_groups) == 1
    for args in ([], ["--help"], ["--version"], ["generat"], ["-h", "generate"]):
        assert app_for(args) is app  # no command named first: the whole app (its help, suggestions, root options)


@pytest.mark.parametrize("tail", [["--help"], ["--no-such-option"], ["-n"]], ids=["help", "unknown-option", "missing-value"])
def test_a_command_alone_answers_as_the_whole_app(tail: list[str]) -> None:
    runner = CliRunner()
    for name in NAMES:
        args = [name, *tail]
        expected = runner.invoke(app, args, prog_name="llama")
        got = runner.invoke(app_for(args), args, prog_name="llama")
        assert (got.exit_code, got.stdout, got.stderr) == (expected.exit_code, expected.stdout, expected.stderr), args
        assert f"llama {name}" in expected.stdout if tail == ["--help"] else expected.stderr.startswith("llama: error:")


def test_the_whole_app_registers_every_command_in_order() -> None:
    assert NAMES == [name for name in COMMANDS if name != "cache"] + ["cache"]  # commands, then the one group


def test_a_server_run_imports_only_what_it_needs() -> None:
    """What a fresh `llama generate --server` process imports: its own command's module, and
    neither the other commands', pydantic (typer's conversion), rich (help only) nor torch."""
    code = (
        "import sys\nfrom llama_cli.cli import main\nsys.argv = ['llama', 'generate', '--server', 'http://127.0.0.1:1', 'x']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    modules = set(result.stdout.split())
    assert "llama_cli.cli.generate" in modules and "cannot reach the server" in result.stderr
    others = {f"llama_cli.cli.{module}" for module, _ in COMMANDS.values()} - {"llama_cli.cli.generate"}
    assert others and not modules & others
    assert not modules & {"pydantic", "rich", "torch"}


def test_a_commands_help_into_a_closed_pipe_is_141() -> None:
    """rich (imported only for help now) still ends quietly with 141 when stdout closes."""
    closed = subprocess.Popen([sys.executable, "-m", "llama_cli", "generate", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    closed.stdout.read(10)  # type: ignore[union-attr]
    closed.stdout.close()  # type: ignore[union-attr]
    assert closed.wait(timeout=60) == 141 and closed.stderr.read() == b""  # type: ignore[union-attr]
