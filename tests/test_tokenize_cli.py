"""`llama tokenize` on a vocab-only GGUF (no tensors, no torch), and tools: tool schemas from
`--tools FILE.json` and tool messages reaching the template in `tokenize --chat`, `generate --chat`
and `chat`."""

from __future__ import annotations

import json
import mmap
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama_cli import cli
from llama_cli.cli import loader
from llama_cli.conversation import HistoryError, ToolsError, parse_messages, parse_tools
from llama_cli.gguf_metadata import _KeyValues

runner = CliRunner()
TEMPLATES = Path(__file__).parent / "data" / "templates"
LLAMA31 = TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": {"type": "object"}}}]
CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
TALK = [{"role": "user", "content": "Weather in Paris?"}, CALL, {"role": "tool", "name": "get_weather", "content": "18 C"}]


@pytest.fixture(scope="module")
def vocab_only(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's GGUF without its tensors: the header's key/values only, as llama.cpp's
    ggml-vocab-*.gguf files are."""
    with default_model_path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        reader = _KeyValues(buf, default_model_path)
        count = len(list(reader.entries()))
        version = struct.unpack_from("<I", buf, 4)[0]
        path = tmp_path_factory.mktemp("vocab") / "ggml-vocab-smollm.gguf"
        path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, 0, count) + buf[24 : reader.pos])
    assert path.stat().st_size < default_model_path.stat().st_size / 20
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"tools": tmp_path / "tools.json", "talk": tmp_path / "talk.json"}
    paths["tools"].write_text(json.dumps(TOOLS))
    paths["talk"].write_text(json.dumps(TALK))
    return paths


def test_tokenize_a_vocab_only_gguf_like_the_model(vocab_only: Path) -> None:
    text = "Hello, world: 2024 ✓"
    model = runner.invoke(cli.app, ["tokenize", "--json", text])
    vocab = runner.invoke(cli.app, ["tokenize", "--json", "-m", str(vocab_only), text])
    assert model.exit_code == vocab.exit_code == 0, vocab.stderr
    assert vocab.stdout == model.stdout
    chat = runner.invoke(cli.app, ["tokenize", "--chat", "-m", str(vocab_only)], input='[{"role": "user", "content": "Hi"}]')
    assert chat.exit_code == 0 and chat.stdout.startswith("[<|im_start|>]system\n")  # the GGUF's own template


def test_tokenize_reads_no_weights_and_imports_no_torch(vocab_only: Path) -> None:
    code = (
        "import sys\nfrom llama_cli.cli import app\ntry:\n    app(['tokenize', '--count', '-m', sys.argv[1], 'Hello'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(vocab_only)], capture_output=True, text=True, timeout=60)
    assert result.stdout == "1\nFalse\n", result.stderr


def test_models_lists_without_torch(default_model_path: Path) -> None:
    from llama_cli.weights.gguf import quantization_label
    from llama_cli.weights.gguf_header import scan_header

    code = "import sys\nfrom llama_cli.cli import app\ntry:\n    app(['models', '--json'])\nexcept SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    rows, imported = result.stdout.splitlines()
    assert imported == "False", result.stderr
    row = next(r for r in json.loads(rows) if r["path"] == str(default_model_path))
    assert row["quantization"] == quantization_label(scan_header(default_model_path)) == "Q4_1"  # general.file_type agrees with the tensors


def test_tokenize_chat_with_tools_and_tool_messages(vocab_only: Path, files: dict[str, Path]) -> None:
    args = ["tokenize", "--chat", "-m", str(vocab_only), "--template", str(LLAMA31), "--tools", str(files["tools"]), str(files["talk"])]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.stderr
    assert '"name": "get_weather"' in result.stdout  # the tool list, as the template writes it
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}' in result.stdout  # the call
    assert 'ipython<|end_header_id|>\n\n"18 C"<|eot_id|>' in result.stdout  # the result (Llama 3.1's ipython role, as JSON)


def test_template_errors_name_the_template_file_and_line(vocab_only: Path, files: dict[str, Path]) -> None:
    hermes = TEMPLATES / "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"  # needs tools
    result = runner.invoke(cli.app, ["tokenize", "--chat", "-m", str(vocab_only), "--template", str(hermes), str(files["talk"])])
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"llama: error: chat template failed to render (template {hermes}, line 38): TypeError: 'NoneType' object is not iterable\n"
    )


def test_tools_need_chat_and_a_good_file(vocab_only: Path, files: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["tokenize", "--tools", str(files["tools"]), "-m", str(vocab_only), "Hi"])
    assert result.exit_code == 2 and "--tools goes with --chat" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('[{"description": "no name"}]')
    result = runner.invoke(cli.app, ["tokenize", "--chat", "--tools", str(bad), "-m", str(vocab_only), str(files["talk"])])
    assert result.exit_code == 1 and result.stderr.startswith(f"llama: error: {bad}: tool 0 is not") and result.stderr.count("\n") == 1


def test_parse_tools() -> None:
    assert parse_tools(TOOLS, "f") == TOOLS
    assert parse_tools(TOOLS[0], "f") == TOOLS  # one tool alone
    assert parse_tools([{"name": "f", "parameters": {}}], "f") == [{"name": "f", "parameters": {}}]  # the bare form, passed on
    for bad in ({"x": 1}, [1], "tools", [{"function": {"description": "d"}}]):
        with pytest.raises(ToolsError):
            parse_tools(bad, "f")


def test_parse_messages_with_tool_calls_and_results() -> None:
    conversation = [*TALK, {"role": "assistant", "content": "18 C and sunny."}]
    parsed = parse_messages(conversation, "f")
    assert parsed[1] == {"role": "assistant", "content": "", **{k: v for k, v in CALL.items() if k != "role"}}  # content defaults to ""
    assert parsed[2] == {"role": "tool", "content": "18 C", "name": "get_weather"}
    assert parse_messages(
        [*conversation, {"role": "user", "content": "And Rome?"}, CALL, TALK[2], {"role": "assistant", "content": "x"}], "f"
    )
    bad = {
        "tool result without an assistant message calling tools": [TALK[0], {"role": "assistant", "content": "A"}, TALK[2]],
        '"tool_calls" belongs to an assistant message': [{"role": "user", "content": "a", "tool_calls": []}],
        "message 1 is not": [TALK[0], {"role": "assistant"}],
        "ends with a tool message": TALK,
    }
    for message, data in bad.items():
        with pytest.raises(HistoryError, match=message):
            parse_messages(data, "f")


def _prompt_tokens(*args: str) -> int:
    """The prompt length `generate --chat` builds, read from its refusal with --ctx 8 (no model run)."""
    result = runner.invoke(cli.app, ["generate", "--chat", "-n", "1", "--ctx", "8", *args, "Weather in Paris?"])
    assert result.exit_code == 1, result.stderr
    return int(re.match(r"llama: error: prompt of (\d+) tokens", result.stderr).group(1))  # type: ignore[union-attr]


def test_generate_and_chat_take_tools(tiny_llm, monkeypatch, files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    llm = tiny_llm  # the default model's tokenizer and template: the prompts are the default model's
    monkeypatch.setattr(loader, "DEFAULT_LOADER", loader.FixedModel(llm))
    plain = _prompt_tokens("--template", str(LLAMA31))
    assert _prompt_tokens("--template", str(LLAMA31), "--tools", str(files["tools"])) > plain + 40  # the tool list, in the prompt
    assert _prompt_tokens("--tools", str(files["tools"])) == _prompt_tokens()  # SmolLM2's own template ignores tools
    from llama_cli.api import make_settings
    from llama_cli.chat import ChatSession

    settings = make_settings(temperature=0, max_tokens=2)
    sessions = [
        ChatSession(llm, settings, template=str(LLAMA31), messages=[*TALK, {"role": "assistant", "content": "18 C."}], tools=tools)
        for tools in (None, TOOLS)
    ]
    assert len(sessions[1].encode()) > len(sessions[0].encode()) + 40
    result = runner.invoke(cli.app, ["chat", "--tools", str(files["tools"]), "--ctx", "8"], input="Hi\n")  # refused before generating
    assert result.exit_code == 1 and "does not fit the 8-token context" in result.stderr, result.stderr
