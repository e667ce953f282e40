"""Rendering a conversation into a prompt with the model's Jinja chat template.

Templates come from model files, so they are untrusted: they render in jinja2's immutable sandbox
(as transformers does), where reaching for Python internals raises a SecurityError that we turn
into a one-line error naming the template and its line. Models without a template get a built-in
one chosen with `--template`.

Templates are code, so rendering is bounded too: no string, list or number a template builds may
exceed `TEMPLATE_MAX_ITEMS` items (checked before `*`, `+`, `**`, and on every number passed to a
call or filter, such as `range(10**9)` or `lipsum(10**7)`), the output may not exceed
`TEMPLATE_MAX_OUTPUT` characters beyond the conversation's own size, and a render that runs past
`TEMPLATE_SECONDS` is stopped (a trace function on the template's own frames checks the clock).
Tracing costs ~2x on a render that takes well under a millisecond for a typical chat turn.

A template sees what transformers' `apply_chat_template` gives it (transformers
`utils/chat_template_utils.py`): `messages`, `tools` (JSON schemas, or none), `documents` (none),
`add_generation_prompt`, `bos_token`, `eos_token`; the globals `raise_exception`, `strftime_now`,
`dict` and `namespace`; a `tojson` that does not escape HTML; the `{% generation %}` tag. So the
real templates render exactly as there (tests/test_chat_templates.py compares them).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypedDict

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import LlamaError, UsageError, literal
from .tokenizer import Tokenizer

Role = Literal["system", "user", "assistant", "tool"]
Tool = dict[str, Any]  # a JSON schema: {"type": "function", "function": {"name", "description", "parameters"}}


class ToolCall(TypedDict):
    type: Literal["function"]
    function: dict[str, Any]  # {"name": ..., "arguments": {...}}


class _MessageFields(TypedDict):
    role: Role
    content: str


class Message(_MessageFields, total=False):
    tool_calls: list[ToolCall]  # an assistant message that calls tools (its content may be "")
    tool_call_id: str  # a tool message: the call it answers
    name: str  # a tool message: the tool that answered


MESSAGE_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "name")  # what templates see of a message


class ChatTemplateError(LlamaError):
    """A template that fails to render, or that the sandbox refused."""


class TemplateText(str):
    """A template's source, carrying where it came from for error messages ("the model's chat template")."""

    origin: str

    def __new__(cls, source: str, origin: str) -> TemplateText:  # noqa: PYI034 (Self is Python 3.11+)
        text = super().__new__(cls, source)
        text.origin = origin
        return text


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
# The special tokens each built-in template writes; a vocabulary without them reads them as text.
BUILTIN_SPECIALS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "llama2": (),
}


TEMPLATE_MAX_ITEMS = 10_000_000  # characters of a string, items of a list, or the size of any number a template uses
TEMPLATE_MAX_OUTPUT = 10_000_000  # characters of output beyond the size of the messages themselves
TEMPLATE_SECONDS = 10.0  # wall time for one render


class TemplateLimitError(jinja2.TemplateError):
    """A template that would use more memory or time than a prompt can need."""


def _check_size(value: Any) -> Any:
    """`value`, refused when it is an int beyond TEMPLATE_MAX_ITEMS (a count, a width, a range end)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > TEMPLATE_MAX_ITEMS:
        raise TemplateLimitError(f"the number {value:.3g} is beyond the {TEMPLATE_MAX_ITEMS:,} a template may use")
    return value


def _check_format(text: str) -> None:
    """Refuse a format string with a width or precision beyond TEMPLATE_MAX_ITEMS ('{:>10000000000}', '%10000000000s')."""
    if (found := re.search(r"\d{8,}", text)) and int(found.group()) > TEMPLATE_MAX_ITEMS:  # 8 digits: the limit's own
        raise TemplateLimitError(f"the format width {int(found.group()):.3g} is beyond the {TEMPLATE_MAX_ITEMS:,} a template may use")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 1


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox that also refuses to build oversized strings, lists and numbers."""

    intercepted_binops = frozenset(("*", "+", "**", "%"))

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and isinstance(left, (str, list, tuple)) != isinstance(right, (str, list, tuple)):
            count = right if isinstance(left, (str, list, tuple)) else left
            if isinstance(count, int) and count * max(_size(left), _size(right)) > TEMPLATE_MAX_ITEMS:
                raise TemplateLimitError(f"'*' would build {count * max(_size(left), _size(right)):,} items (limit {TEMPLATE_MAX_ITEMS:,})")
        elif operator == "+" and _size(left) + _size(right) > TEMPLATE_MAX_ITEMS:
            raise TemplateLimitError(f"'+' would build {_size(left) + _size(right):,} items (limit {TEMPLATE_MAX_ITEMS:,})")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * abs(left).bit_length() > 64 * 1024
        ):
            raise TemplateLimitError(f"'**' would build a number of {right * abs(left).bit_length():,} bits")  # ~20,000 digits at most
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            _check_size(value)
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        """jinja2 wraps `str.format` where the template reads it; the format string is checked there."""
        if getattr(value, "__name__", "") in ("format", "format_map") and isinstance(getattr(value, "__self__", None), str):
            _check_format(value.__self__)
        return super().wrap_str_format(value)


def _bounded_filter(function: Any) -> Any:
    """`function` with its arguments checked; not the value filtered, which comes first (after the
    context or environment, for filters jinja2 passes one to)."""
    arguments_from = 2 if getattr(function, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[arguments_from:], *kwargs.values()):
            _check_size(value)
        return function(*args, **kwargs)

    return bounded


class _Deadline:
    """A trace function that stops a render running past `seconds`: template frames only, checked every 1,000 lines."""

    def __init__(self, seconds: float) -> None:
        self.end, self.lines = time.monotonic() + seconds, 0

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        return self._line if frame.f_code.co_filename == "<template>" else None

    def _line(self, frame: Any, event: str, arg: Any) -> Any:
        self.lines += 1
        if self.lines % 1000 == 0 and time.monotonic() > self.end:
            raise TemplateLimitError(f"rendering ran past {TEMPLATE_SECONDS:g} s")
        return self._line


def _render(template: jinja2.Template, budget: int, **context: Any) -> str:
    """Render under the deadline, stopping once the output passes `budget` characters."""
    parts, size, previous = [], 0, sys.gettrace()
    sys.settrace(_Deadline(TEMPLATE_SECONDS))
    try:
        for part in template.generate(**context):
            size += len(part)
            if size > budget:
                raise TemplateLimitError(f"the prompt grew past {budget:,} characters")
            parts.append(part)
    finally:
        sys.settrace(previous)
    return "".join(parts)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """jinja2's lorem ipsum global, at most 100 paragraphs of at most 1,000 words (its own loop is not traced)."""
    if n > 100 or max > 1000:
        raise TemplateLimitError(f"lipsum({n}, max={max}) is beyond 100 paragraphs of 1,000 words")
    return jinja2.utils.generate_lorem_ipsum(n, html, min, max)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return dict(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore names (as transformers' does)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # jinja2's own signature trick: `self` may be a keyword
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a template may not store the underscore name {name!r} on a namespace")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it; renders its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja2.ext.Extension declares it so)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    # optimized=False: jinja2 folds constant expressions at compile time by calling them directly,
    # past the sandbox's checks ('{:>10000000000}'.format('') would be built while compiling).
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, optimized=False, extensions=[jinja2.ext.loopcontrols, _Generation])
    env.filters["tojson"] = _tojson
    env.filters.update({name: _bounded_filter(function) for name, function in env.filters.items()})
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt), dict=_dict, namespace=_Namespace,
        lipsum=_lipsum,
    )  # fmt: skip
    return env.from_string(template)


def _template_line(error: BaseException) -> int | None:
    """The template line an error was raised at: jinja2 rewrites tracebacks to show template lines
    in frames named "<template>"; a syntax error carries its line itself."""
    if isinstance(error, jinja2.TemplateSyntaxError):
        return error.lineno
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def select_template(model_template: str | None, choice: str = "auto") -> TemplateText:
    """The template to use: the model's own for "auto" (ChatML if it has none), else a built-in."""
    if choice == "auto":
        if model_template:
            return TemplateText(model_template, "the model's chat template")
        return TemplateText(BUILTIN_TEMPLATES["chatml"], "the built-in chatml template (the model has none)")
    if choice not in BUILTIN_TEMPLATES:
        raise UsageError.naming(f"unknown {{template}} '{literal(choice)}'; choose auto, {', '.join(BUILTIN_TEMPLATES)}")
    return TemplateText(BUILTIN_TEMPLATES[choice], f"the built-in {choice} template")


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[Tool] | None = None,
) -> str:
    """The prompt text for `messages`; special tokens appear as text, to be encoded with parse_special.

    `tools` (JSON schemas) reach templates that use them; others ignore them. Any failure, at
    compile or render time, is a ChatTemplateError naming the template (`TemplateText.origin`) and line.
    """
    try:
        given = sum(len(str(m.get("content") or "")) for m in messages) + len(json.dumps(tools or []))
        return _render(
            _compile(template), TEMPLATE_MAX_OUTPUT + given,
            messages=list(messages), tools=None if tools is None else list(tools), documents=None,
            add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 (a template can fail any way Python can: all become one error line)
        origin = getattr(template, "origin", "the chat template")
        line = _template_line(error)
        where = f"{origin}, line {line}" if line is not None else origin
        if isinstance(error, SecurityError):
            raise ChatTemplateError(f"chat template refused by the sandbox ({where}; it reaches for Python internals): {error}") from None
        detail = error if isinstance(error, jinja2.TemplateError) else f"{type(error).__name__}: {error}"
        raise ChatTemplateError(f"chat template failed to render ({where}): {detail}") from None


def check_builtin_template(tokenizer: Tokenizer, choice: str) -> None:
    """Refuse a built-in template whose special tokens the vocabulary lacks (the model would see
    them spelled out as text, and copy them into its reply). Other choices pass unchecked."""
    missing = [
        t
        for t in BUILTIN_SPECIALS.get(choice, ())
        if not any(map(tokenizer.is_special, tokenizer.encode(t, bos=False, parse_special=True)))
    ]
    if missing:
        raise UsageError.naming(
            f"{{template}} {literal(choice)} writes {literal(', '.join(missing))}, which this model's vocabulary lacks; use "
            "{template} auto (the model's own) or another"
        )


def template_text(model_template: str | None, choice: str) -> TemplateText:
    """`--template`: auto (the model's own), a built-in name, or a Jinja file."""
    if choice == "auto" or choice in BUILTIN_TEMPLATES:
        return select_template(model_template, choice)
    path = Path(choice).expanduser()
    if path.is_file():
        try:
            return TemplateText(path.read_text(encoding="utf-8"), f"template {choice}")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError.naming(f"{{template}} {literal(choice)}: cannot read it: {literal(error)}") from None
    raise UsageError.naming(
        f"unknown {{template}} '{literal(choice)}'; choose auto, {', '.join(BUILTIN_TEMPLATES)}, or a Jinja template file"
    )


def render_prompt(
    tokenizer: Tokenizer,
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Tool] | None = None,
) -> str:
    """The conversation as prompt text; special tokens appear as text (encode with parse_special).
    Only the message fields templates know (MESSAGE_FIELDS) are passed on."""
    special = tokenizer.special
    bos = tokenizer.piece(special.bos_id) if special.bos_id is not None else ""
    eos = tokenizer.piece(special.eos_id) if special.eos_id is not None else ""
    plain = [Message(**{k: m[k] for k in MESSAGE_FIELDS if k in m}) for m in messages]  # type: ignore[typeddict-item, misc]
    return render_chat(template, plain, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos, tools=tools)


def encode_conversation(
    tokenizer: Tokenizer,
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Tool] | None = None,
) -> list[int]:
    """The ids the model sees for a conversation: rendered, then encoded with special tokens
    parsed and no BOS added (the template writes its own)."""
    text = render_prompt(tokenizer, template, messages, add_generation_prompt=add_generation_prompt, tools=tools)
    return tokenizer.encode(text, bos=False, parse_special=True)
