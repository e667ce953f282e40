"""Option bundles: groups of options a command takes as one parameter.

A command names a bundle as one keyword parameter; `@bundled` puts the bundle's options into the
command's signature for Typer in that place, and calls the command with the object the bundle
builds from their values (a dataclass, a dict of settings...). The options are defined once and
every command that takes the bundle shows the same ones, in the same order, with the same help.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Bundle:
    """Options that travel together: the parameters Typer shows, and `build`, which makes one object of their values."""

    def __init__(self, build: Callable[..., Any], parameters: Sequence[inspect.Parameter]) -> None:
        self.build, self.parameters = build, tuple(parameters)


def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def bundled(**bundles: Bundle) -> Callable[[F], F]:
    """Give each named parameter of the command its bundle's options; the command receives the built object."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name in bundles:
                parameters.extend(bundles[parameter.name].parameters)
            else:
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            for name, bundle in bundles.items():
                values[name] = bundle.build(**{p.name: values.pop(p.name) for p in bundle.parameters})
            return command(**values)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate
