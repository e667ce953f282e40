"""Rendering a conversation into a prompt with the model's Jinja chat template.

Templates come from model files, so they are untrusted: they render in jinja2's immutable sandbox
(as transformers does), where reaching for Python internals raises a SecurityError that we turn
into a one-line error. Models without a template get a built-in one chosen with `--template`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, TypedDict

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import LlamaError, UsageError
from .tokenizer import Tokenizer

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    role: Role
    content: str


class ChatTemplateError(LlamaError):
    """A template that fails to render, or that the sandbox refused."""


# Built-in templates for models whose files carry none.
BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set messages = messages[1:] %}"
        "{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}
TemplateName = Literal["auto", "chatml", "llama3", "llama2"]


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def select_template(model_template: str | None, choice: str = "auto") -> str:
    """The template text to use: the model's own for "auto" (ChatML if it has none), else a built-in."""
    if choice == "auto":
        return model_template or BUILTIN_TEMPLATES["chatml"]
    if choice not in BUILTIN_TEMPLATES:
        raise UsageError(f"unknown --template '{choice}'; choose auto, {', '.join(BUILTIN_TEMPLATES)}")
    return BUILTIN_TEMPLATES[choice]


def render_chat(
    template: str,
    messages: list[Message],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for `messages`; special tokens appear as text, to be encoded with parse_special."""
    try:
        compiled = _environment().from_string(template)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token)
    except SecurityError as error:
        raise ChatTemplateError(f"chat template refused by the sandbox (it reaches for Python internals): {error}") from None
    except jinja2.TemplateError as error:
        raise ChatTemplateError(f"chat template failed to render: {error}") from None


def template_text(model_template: str | None, choice: str) -> str:
    """`--template`: auto (the model's own), a built-in name, or a Jinja file."""
    if choice == "auto" or choice in BUILTIN_TEMPLATES:
        return select_template(model_template, choice)
    path = Path(choice).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--template {choice}: cannot read it: {error}") from None
    raise UsageError(f"unknown --template '{choice}'; choose auto, {', '.join(BUILTIN_TEMPLATES)}, or a Jinja template file")


def render_prompt(tokenizer: Tokenizer, template: str, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
    """The conversation as prompt text; special tokens appear as text (encode with parse_special)."""
    special = tokenizer.special
    bos = tokenizer.piece(special.bos_id) if special.bos_id is not None else ""
    eos = tokenizer.piece(special.eos_id) if special.eos_id is not None else ""
    plain: list[Message] = [{"role": m["role"], "content": m["content"]} for m in messages]
    return render_chat(template, plain, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
