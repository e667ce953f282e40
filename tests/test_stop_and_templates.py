"""Stop strings held back across token boundaries, and chat templates in the sandbox."""

from __future__ import annotations

import pytest

from llama_cli.chat_template import BUILTIN_TEMPLATES, ChatTemplateError, render_chat, select_template
from llama_cli.errors import UsageError
from llama_cli.generation import StopMatcher


def run_matcher(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + matcher.flush(), False


def test_stop_spanning_pieces_is_cut_and_not_printed() -> None:
    assert run_matcher(["\n\nQ:"], ["Answer", " here", ".\n", "\nQ", ": next"]) == ("Answer here.", True)


def test_partial_match_that_fails_is_released() -> None:
    assert run_matcher(["STOP"], ["ab", "ST", "OX", "yz"]) == ("abSTOXyz", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run_matcher(["world", "lo w"], ["hello world"]) == ("hel", True)


def test_no_stops_releases_everything_at_once() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("abc") == ("abc", False)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_chatml_builtin() -> None:
    text = render_chat(BUILTIN_TEMPLATES["chatml"], MESSAGES)  # type: ignore[arg-type]
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_llama3_builtin() -> None:
    text = render_chat(BUILTIN_TEMPLATES["llama3"], MESSAGES, bos_token="<|begin_of_text|>")  # type: ignore[arg-type]
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama2_builtin() -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = render_chat(BUILTIN_TEMPLATES["llama2"], messages, bos_token="<s>", eos_token="</s>")  # type: ignore[arg-type]
    assert text == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST]"


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% set x = messages.append(1) %}",
])  # fmt: skip
def test_sandbox_refuses_python_internals(attack: str) -> None:
    with pytest.raises(ChatTemplateError, match="sandbox|failed"):
        render_chat(attack, MESSAGES)  # type: ignore[arg-type]


def test_template_errors_are_one_line_errors() -> None:
    with pytest.raises(ChatTemplateError, match="failed to render"):
        render_chat("{{ raise_exception('only user and assistant roles') }}", MESSAGES)  # type: ignore[arg-type]


def test_select_template() -> None:
    assert select_template("X", "auto") == "X"
    assert select_template(None, "auto") == BUILTIN_TEMPLATES["chatml"]
    with pytest.raises(UsageError):
        select_template("X", "nope")
