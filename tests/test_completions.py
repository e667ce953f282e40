"""The committed completion scripts match the commands, and the bash one really completes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llama_cli.cli.app import root_command
from llama_cli.cli.completions import FILENAMES, SHELLS, commands, render

FOLDER = Path(__file__).resolve().parent.parent / "completions"


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_scripts_are_up_to_date(shell: str) -> None:
    committed = (FOLDER / FILENAMES[shell]).read_text(encoding="utf-8")
    stale = f"completions/{FILENAMES[shell]} is stale: run `python -m llama_cli.cli.write_completions completions/`"
    assert committed == render(shell, root_command()), stale


@pytest.mark.parametrize("shell", SHELLS)
def test_every_command_and_option_is_in_the_script(shell: str) -> None:
    script = render(shell, root_command())
    for command in commands(root_command()):
        assert command.name in script
        for option in command.options:
            long = next(n for n in option.names if n.startswith("--"))
            assert (long if shell != "fish" else f"-l {long[2:]}") in script


def complete_bash(line: str) -> list[str]:
    words = line.split(" ")
    script = f"""
source {FOLDER / FILENAMES["bash"]}
COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}
_llama; printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_bash_completes_commands_options_and_values() -> None:
    assert "generate" in complete_bash("llama gen")
    assert complete_bash("llama generate --ig") == ["--ignore-eos"]
    assert complete_bash("llama chat --dtype bf") == ["bfloat16"]
