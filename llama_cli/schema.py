"""What structured output must look like: a `Spec` built from `--schema`, `--regex`, `--choice`, ...

A Spec is the checked, tokenizer-free half of constrained decoding: the user's schema, pattern or
grammar, compiled to an llguidance grammar and validated, so that anything llguidance cannot
honour (an unimplemented JSON Schema keyword, an unknown format, a bad regex or Lark rule) is a
one-line usage error before any model loads. It imports neither torch nor the model code.
Enforcing a Spec token by token is constraints.py's job.

Schemas come as inline JSON, a JSON file, or the concise form of Simon Willison's `llm`
("name, age int, bio: one sentence": comma- or line-separated fields, each `name [type][: description]`,
types str/int/float/bool, all fields required, no others). `--schema-multi` asks for a JSON array of such objects.

JSON is written compactly (`{"a": 1, "b": [2, 3]}`: no free whitespace), which keeps a small model
from drifting into endless blank lines inside an object.

References: llguidance docs/json_schema.md (supported keywords) and docs/syntax.md (Lark);
`llm` docs/schemas.md (the concise syntax); OpenAI's `response_format`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import UsageError, literal

Kind = Literal["json", "regex", "choice", "grammar"]

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CONCISE_TYPES = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
}
ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Spec:
    """A checked output constraint. `grammar` is llguidance's grammar text (JSON); `option` names
    where it came from, for messages, as an errors.LlamaError.naming template: `{schema}` is the
    field (the CLI writes --schema), other text is literal; `schema` is the JSON Schema of a "json" spec."""

    kind: Kind
    grammar: str
    option: str
    schema: dict[str, Any] | None = field(default=None, compare=False)  # (the grammar holds it: equal and hashable without it)
    pattern: str = ""  # the regex, or the grammar's text
    choices: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)  # llguidance's warnings, for stderr

    def prompt_note(self) -> str:
        """The system-message addendum that shows the model what to write."""
        if self.kind == "json":
            if self.schema == ANY_OBJECT:
                return "Reply with a JSON object only, nothing else."
            shown = json.dumps(self.schema, ensure_ascii=False, separators=(",", ":"))
            return f"Reply with JSON only, nothing else, matching this JSON Schema: {shown}"
        if self.kind == "choice":
            return "Reply with exactly one of these, nothing else: " + ", ".join(self.choices)
        if self.kind == "regex":
            return f"Reply with text that matches this regular expression, nothing else: {self.pattern}"
        return f"Reply with text in this grammar (Lark syntax), nothing else:\n{self.pattern}"

    def parse(self, text: str) -> Any:
        """The value of a complete output: parsed JSON for a "json" spec, else the text itself."""
        return json.loads(text) if self.kind == "json" else text


def one_line(message: str) -> str:
    """llguidance's multi-line messages (with a caret under the fault) as one line."""
    lines = [line.strip() for line in message.strip().splitlines()]
    kept = [line for line in lines if line and not re.fullmatch(r"\^+", line) and not re.match(r"\d+ \|", line)]
    return re.sub(r"^at \d+\(\d+\): ", "", " ".join(kept))  # a position in the generated grammar means nothing to the user


def _check(grammar: str, option: str) -> tuple[str, ...]:
    import llguidance

    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise UsageError.naming(f"{option}: {literal(one_line(messages[0]))}")
    return tuple(one_line(m) for m in messages)


def concise_schema(text: str, option: str = "{schema}") -> dict[str, Any]:
    """`llm`'s concise schema ('name, age int, bio: one sentence') as a JSON Schema object."""
    separator = "\n" if "\n" in text else ","
    properties: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(separator)):
        if not item:
            continue
        head, colon, description = item.partition(":")
        words = head.split()
        if not words or len(words) > 2:
            raise UsageError.naming(
                f"{option}: cannot read the field {literal(repr(item))}: write 'name [type][: description]', e.g. 'age int: in years'"
            )
        name, kind = words[0], words[1] if len(words) == 2 else "str"
        if kind not in CONCISE_TYPES:
            raise UsageError.naming(
                f"{option}: unknown type {literal(repr(kind))} for field {literal(repr(name))}; use str, int, float or bool"
            )
        if name in properties:
            raise UsageError.naming(f"{option}: the field {literal(repr(name))} is given twice")
        properties[name] = {"type": CONCISE_TYPES[kind]}
        if colon and description.strip():
            properties[name]["description"] = description.strip()
    if not properties:
        raise UsageError.naming(f"{option}: no fields given; e.g. {option} 'name, age int'")
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def read_schema(value: str, option: str = "{schema}") -> dict[str, Any]:
    """A JSON Schema from inline JSON, a .json file, or the concise form."""
    text = value.strip()
    if not text:
        raise UsageError.naming(f"{option}: empty; give JSON, a file, or fields like 'name, age int'")
    path = Path(text)
    if not text.startswith(("{", "[")) and (text.endswith(".json") or path.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = literal(getattr(error, "strerror", None) or error)
            raise UsageError.naming(f"{option}: cannot read {literal(value)}: {reason}") from None
        source = value
    elif text.startswith(("{", "[")):
        source = "the inline schema"
    else:
        return concise_schema(text, option)
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError.naming(f"{option}: {literal(source)} is not valid JSON: {literal(error)}") from None
    if not isinstance(schema, dict):
        raise UsageError.naming(f"{option}: {literal(source)} must be a JSON object (a JSON Schema), not {type(schema).__name__}")
    return schema


def json_spec(schema: dict[str, Any], option: str = "{schema}") -> Spec:
    """A Spec for JSON matching `schema`; unsupported keywords and bad patterns are UsageErrors."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as error:
        raise UsageError.naming(f"{option}: {literal(one_line(str(error)))}") from None
    return Spec("json", grammar, option, schema=schema, notes=_check(grammar, option))


def regex_spec(pattern: str, option: str = "{regex}") -> Spec:
    import llguidance

    if not pattern:
        raise UsageError.naming(f"{option}: empty pattern")
    grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
    return Spec("regex", grammar, option, pattern=pattern, notes=_check(grammar, option))


def choice_spec(choices: list[str] | str) -> Spec:
    """One of the given strings; a str is split at commas (spaces around each item are dropped)."""
    import llguidance

    items = [c.strip() for c in choices.split(",")] if isinstance(choices, str) else list(choices)
    if not items or any(not c for c in items):
        raise UsageError.naming("{choice}: give non-empty items separated by commas, e.g. {choice} yes,no,maybe")
    grammar = llguidance.LLMatcher.grammar_from_lark(
        "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in dict.fromkeys(items))
    )
    return Spec("choice", grammar, "{choice}", choices=tuple(dict.fromkeys(items)), notes=_check(grammar, "{choice}"))


def grammar_spec(text: str, option: str = "{grammar}") -> Spec:
    """A Lark grammar (llguidance's dialect), or a llama.cpp GBNF one, which llguidance converts."""
    import llguidance

    if not text.strip():
        raise UsageError.naming(f"{option}: the grammar is empty")
    try:
        grammar = llguidance.grammar_from("grammar", text)
    except ValueError as error:
        raise UsageError.naming(f"{option}: {literal(one_line(str(error)))}") from None
    return Spec("grammar", grammar, option, pattern=text, notes=_check(grammar, option))


def read_grammar(path: str) -> Spec:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError.naming(f"{{grammar}}: cannot read {literal(path)}: {literal(getattr(error, 'strerror', None) or error)}") from None
    return grammar_spec(text)


def spec_from_options(
    *,
    schema: str | None = None,
    schema_multi: str | None = None,
    regex: str | None = None,
    choice: str | None = None,
    grammar: str | None = None,
    json_object: bool = False,
) -> Spec | None:
    """The Spec the CLI options ask for (at most one of them), or None for free text."""
    given = [
        "{" + name + "}"
        for name, value in (
            ("schema", schema),
            ("schema_multi", schema_multi),
            ("regex", regex),
            ("choice", choice),
            ("grammar", grammar),
            ("json_object", json_object or None),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise UsageError.naming(f"{' and '.join(given)} cannot be combined: give one constraint")
    if schema is not None:
        return json_spec(read_schema(schema))
    if schema_multi is not None:
        return json_spec({"type": "array", "items": read_schema(schema_multi, "{schema_multi}")}, "{schema_multi}")
    if regex is not None:
        return regex_spec(regex)
    if choice is not None:
        return choice_spec(choice)
    if grammar is not None:
        return read_grammar(grammar)
    if json_object:
        return json_spec(ANY_OBJECT, "{json_object}")
    return None


def spec_from_response_format(response_format: dict[str, Any]) -> Spec | None:
    """A Spec from an OpenAI-style `response_format` (for a server).

    {"type": "text"} -> None; {"type": "json_object"}; {"type": "json_schema", "json_schema": {"schema": {...}}};
    and the extensions {"type": "regex", "regex": "..."}, {"type": "choice", "choice": [...]},
    {"type": "grammar", "grammar": "..."} (Lark or GBNF). Errors are UsageErrors naming the field.
    """
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_spec(ANY_OBJECT, "response_format")
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise UsageError("response_format.json_schema.schema: expected a JSON Schema object")
        return json_spec(schema, "response_format.json_schema.schema")
    value = response_format.get(kind) if isinstance(kind, str) else None
    if kind == "regex" and isinstance(value, str):
        return regex_spec(value)
    if kind == "choice" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return choice_spec(value)
    if kind == "grammar" and isinstance(value, str):
        return grammar_spec(value, "response_format.grammar")
    raise UsageError(
        f"response_format: unsupported type {kind!r} (or its value is missing); use text, json_object, json_schema, regex, choice "
        "or grammar"
    )
