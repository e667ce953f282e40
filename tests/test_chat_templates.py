"""Real chat templates render exactly as transformers' apply_chat_template renders them.

The templates in tests/data/templates/ are llama.cpp's copies (see the NOTICE there) of the
LLaMA-family models' own: Llama 3.1/3.2/3.3, Mistral Nemo, Mistral Small 3.2, Devstral, Phi-3.5,
DeepSeek-R1-Distill-Llama, Hermes 2 Pro and 3 (tool use), SmolLM3, Granite 3.3. Each conversation
goes through both renderers with the same bos/eos tokens; a conversation a template refuses must
be refused by both. transformers needs a tokenizer object for apply_chat_template: a one-word
vocabulary built in memory, no hub.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from llama_cli.chat_template import ChatTemplateError, TemplateText, render_chat

TEMPLATES = Path(__file__).parent / "data" / "templates"
# bos and eos token of each model, by a part of the template's file name.
SPECIAL = {
    "meta-llama": ("<|begin_of_text|>", "<|eot_id|>"),
    "Hermes": ("<|begin_of_text|>", "<|im_end|>"),
    "istral": ("<s>", "</s>"),  # Mistral Nemo, Mistral Small, Devstral
    "Phi": ("<s>", "<|endoftext|>"),
    "DeepSeek": ("<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"),
    "SmolLM3": ("<|im_start|>", "<|im_end|>"),
    "granite": ("<|end_of_text|>", "<|end_of_text|>"),
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city, e.g. Paris"}},
                "required": ["city"],
            },
        },
    }
]
ASK = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {  # Mistral's templates want a 9-character alphanumeric call id
    "role": "assistant",
    "content": "",
    "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
}
RESULT = {"role": "tool", "tool_call_id": "abcDEF123", "name": "get_weather", "content": '{"temperature": 18, "sky": "sunny"}'}
# name -> (messages, tools, add_generation_prompt)
CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool]] = {
    "system_and_user": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b> & 'you'"}], None, True),
    "turns": (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "A joke?"},
        ],
        None,
        True,
    ),
    "closed": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        None,
        False,
    ),
    "tools": ([ASK], TOOLS, True),
    "tool_result": ([ASK, CALL, RESULT], TOOLS, True),
}


def _special(name: str) -> tuple[str, str]:
    return next(tokens for key, tokens in SPECIAL.items() if key in name)


@pytest.fixture(scope="module")
def hf_render():  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    def render(template: str, bos: str, eos: str, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> str:
        backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, chat_template=template)
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)

    return render


def test_the_templates_are_there() -> None:
    assert len(list(TEMPLATES.glob("*.jinja"))) == 12


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(p.name for p in TEMPLATES.glob("*.jinja")))
def test_template_renders_as_transformers_does(hf_render, name: str, case: str) -> None:  # type: ignore[no-untyped-def]
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    bos, eos = _special(name)
    messages, tools, add_generation_prompt = CASES[case]
    try:
        want: str | None = hf_render(text, bos, eos, copy.deepcopy(messages), copy.deepcopy(tools), add_generation_prompt)
    except Exception:  # noqa: BLE001 (the template refuses this conversation: ours must refuse it too)
        want = None
    template = TemplateText(text, name)
    if want is None:
        with pytest.raises(ChatTemplateError, match=name):
            render_chat(template, messages, tools=tools, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)  # type: ignore[arg-type]
        assert "Hermes" in name and tools is None  # only the tool-use templates refuse a conversation here (they need tools)
        return
    got = render_chat(template, messages, tools=tools, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)  # type: ignore[arg-type]
    assert got == want
    if tools is not None and not any(key in name for key in ("SmolLM3", "DeepSeek", "Phi")):
        assert "get_weather" in got  # the tool list reaches the prompt (SmolLM3 reads `xml_tools`; DeepSeek-R1 and Phi-3.5 take none)


def test_errors_name_the_template_and_line() -> None:
    template = TemplateText("line one\n{% for m in messages %}\n{{ m.content + 1 }}\n{% endfor %}", "template my.jinja")
    with pytest.raises(ChatTemplateError, match=r"\(template my.jinja, line 3\): TypeError"):
        render_chat(template, [{"role": "user", "content": "Hi"}])
    with pytest.raises(ChatTemplateError, match=r"\(template my.jinja, line 2\)"):
        render_chat(TemplateText("ok\n{% if %}", "template my.jinja"), [])
    with pytest.raises(ChatTemplateError, match=r"\(the chat template, line 1\): only user"):
        render_chat("{{ raise_exception('only user and assistant roles') }}", [])


def test_tojson_does_not_escape_html() -> None:
    # jinja2's own tojson writes "<" as "\u003c" and sorts keys; transformers' (and ours) does neither.
    assert render_chat("{{ tools | tojson }}", [], tools=[{"b": "<x>", "a": 1}]) == '[{"b": "<x>", "a": 1}]'
