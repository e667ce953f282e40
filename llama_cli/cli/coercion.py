"""Option values without pydantic: the plain types our commands take, converted as typer converts them.

typer (0.2x) converts every parameter's value, defaults included, through a pydantic TypeAdapter
it builds for that parameter on first use. Importing pydantic and building the ~40 adapters of a
command cost ~0.12 s of every run: a third of a warm `llama generate --server` (the goal is a
first token within 0.3 s). Our options are str, int, float, flags and lists of str, so `install` gives
each such parameter a converter that returns typer's own result for the values it recognises
(text, whole and decimal numbers written plainly, the typed defaults) and hands every other value
to typer's adapter, so that a refusal keeps typer's message. tests/test_cli_coercion.py holds the
two to the same results over every parameter of every command.
"""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

INT = re.compile(r"[+-]?[0-9]{1,18}")  # int() and pydantic agree on these; longer ones go to typer
FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,2})?")
PLAIN = (str, int, float, bool)
UNKNOWN = object()  # a value this module leaves to typer


def convert(annotation: Any, value: Any) -> Any:
    """typer's value for one plain `annotation` (str, int, float, bool), or UNKNOWN."""
    if (annotation is str and isinstance(value, str)) or (annotation is bool and type(value) is bool):
        return value
    if annotation is int and (type(value) is int or (isinstance(value, str) and INT.fullmatch(value))):
        return int(value)
    if annotation is float and (type(value) in (int, float) or (isinstance(value, str) and FLOAT.fullmatch(value))):
        return float(value)
    return UNKNOWN


def plain_type(descriptor: Any) -> tuple[Any, bool] | None:
    """(the element type, whether a list of them) when this module converts the parameter; else None."""
    info = descriptor.parameter_info
    if any(getattr(info, name, None) is not None for name in ("min", "max", "parser", "click_type")):
        return None  # ranges and custom parsers stay typer's
    annotation = descriptor.annotation
    if get_origin(annotation) is list and len(get_args(annotation)) == 1 and get_args(annotation)[0] in PLAIN:
        return get_args(annotation)[0], True
    return (annotation, False) if annotation in PLAIN else None


class PlainValues:
    """Stands in for typer's runtime converter of one parameter: `coerce(value, param=, ctx=)`."""

    def __init__(self, param: Any, element: Any, is_list: bool) -> None:
        self.param, self.element, self.is_list = param, element, is_list
        self._typer: Any = None

    def coerce(self, value: Any, *, param: Any, ctx: Any) -> Any:
        many = param.multiple or param.nargs == -1
        if value is None:
            return () if many else None  # as typer: an absent value is not converted
        if self.is_list and many and isinstance(value, (list, tuple)):
            items = [convert(self.element, item) for item in value]
            if all(item is not UNKNOWN for item in items):
                return items
        elif not self.is_list and not many:
            plain = convert(self.element, value)
            if plain is not UNKNOWN:
                return plain
        return self.typer().coerce(value, param=param, ctx=ctx)

    def typer(self) -> Any:
        """typer's own converter (and with it pydantic), built the first time a value needs it."""
        if self._typer is None:
            from typer._coercion import build_runtime_param

            self._typer = build_runtime_param(self.param.type_descriptor)
        return self._typer


def install(param: Any) -> None:
    """Give a plain parameter a PlainValues converter; others (and another typer's parameters) stay as they are."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", UNKNOWN) is not None:
        return
    plain = plain_type(descriptor)
    if plain is not None:
        param._runtime_param = PlainValues(param, *plain)
