"""The `llama` Typer app: every command registered here, in the order of `llama --help`, and `main`.

The command modules do not know the app (they import nothing from here), so the imports run one
way: app -> commands -> options, loader, render. torch and the model code are imported inside the
commands, after their options are checked, so `llama --help` and usage errors stay instant. A run
of one command imports and builds only that command (`app_for`), and rich is imported only to
show help: a warm `llama generate --server` should print its first token within 0.3 s. `app`, the
whole app (the completion scripts, tests), is built on first use.
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from .coercion import install as install_converter
from .errors import click_errors, quiet_broken_pipe
from .render import ensure_utf8_stdout, print_warnings_as_lines


def _plain_metavars(command: Any) -> None:
    """On/off flags take no value and repeatable options one at a time: show no `<bool>` or `<list[str]>` in the help.
    Also converts plain values without pydantic (coercion.py)."""
    for param in command.params:
        install_converter(param)
        if getattr(param, "param_type_name", "") == "argument" and param.nargs != 1:
            element = "<" + param.bare_type().removeprefix("list[").removesuffix("]") + ">"
            param.display_type_rich = lambda ctx, shown=element: shown  # the type column: one value's type (the name says "...")
            continue
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
        elif param.multiple:
            param.metavar = "<" + param.bare_type().removeprefix("list[").removesuffix("]") + ">"


class Command(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_metavars(self)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _quiet_rich_on_broken_pipe()
        super().format_help(ctx, formatter)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
            install_converter(option)
        return option


class Group(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_metavars(self)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _quiet_rich_on_broken_pipe()
        super().format_help(ctx, formatter)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Usage errors as one line on stderr (exit 2) instead of click's boxed help, in-process as from the shell."""
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except click_errors.NoArgsIsHelpError as error:
            # Building the error rendered the help: rich mode printed it already (and left the message
            # empty), plain mode left it in the message. Print it once either way.
            if error.format_message().strip():
                print(error.format_message())
            code = 0
        except click_errors.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            print(f"llama: error: {error.format_message()}{hint}", file=sys.stderr)
            code = 2
        except click_errors.ClickException as error:
            print(f"llama: error: {error.format_message()}", file=sys.stderr)
            code = error.exit_code
        except typer.Abort:  # Ctrl-C or EOF outside a command's own handling
            print("llama: interrupted", file=sys.stderr)
            code = 130
        except BrokenPipeError:  # stdout closed while help or a usage message was printed (`llama --help | head -c 10`)
            code = quiet_broken_pipe().exit_code
        if not standalone_mode:
            return code
        sys.exit(code)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
            install_converter(option)
        return option


SETTINGS: dict[str, Any] = {
    "name": "llama",
    "cls": Group,
    "help": "Run LLaMA-family language models on your own machine. Model text goes to stdout; everything else to stderr.",
    "no_args_is_help": True,
    "add_completion": False,  # `llama completions SHELL` prints the scripts in completions/: one mechanism
    "pretty_exceptions_enable": False,
    "rich_markup_mode": "rich",
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
# Every command in the order of `llama --help`: its module in this package and its help panel.
COMMANDS: dict[str, tuple[str, str | None]] = {
    "generate": ("generate", None),
    "chat": ("chat", None),
    "tokenize": ("tokenize", None),
    "pull": ("models", None),
    "summarize": ("presets", None),
    "translate": ("presets", None),
    "qa": ("presets", None),
    "models": ("models", None),
    "show": ("models", None),
    "cache": ("models", None),  # a group: cache, prune, clear
    "completions": ("models", None),
    "train": ("train", "Training"),
    "finetune": ("train", "Training"),
    "merge": ("train", "Training"),
    "bench": ("bench", None),
    "perplexity": ("bench", None),
    "serve": ("serve", None),
}


def _version(value: bool) -> None:
    if value:
        print(f"llama {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    ensure_utf8_stdout()
    print_warnings_as_lines()


def _cache_app(models: Any) -> typer.Typer:
    cache_app = typer.Typer(
        cls=Group,
        help="List or remove what `llama` keeps in its cache folder ($LLAMA_CACHE): GGUF metadata, built kernels.",
        invoke_without_command=True,
        no_args_is_help=False,
    )
    cache_app.callback()(models.cache)
    cache_app.command(cls=Command)(models.prune)
    cache_app.command(cls=Command)(models.clear)
    return cache_app


def build(names: Iterable[str]) -> typer.Typer:
    """The app with the named commands (in the order given), each command's module imported here."""
    built = typer.Typer(**SETTINGS)
    built.callback()(_root)
    for name in names:
        module_name, panel = COMMANDS[name]
        module = importlib.import_module(f"{__package__}.{module_name}")
        if name == "cache":
            built.add_typer(_cache_app(module), name=name)
        else:
            built.command(cls=Command, **({"rich_help_panel": panel} if panel else {}))(getattr(module, name))
    return built


@functools.cache
def whole_app() -> typer.Typer:
    """Every command: `llama --help`, the completion scripts, and `app` for tests and callers."""
    return build(COMMANDS)


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use, so that a run of one command imports only its own module
        return whole_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def root_command() -> Any:
    """The app as a Click group (for the completion scripts)."""
    return typer.main.get_command(whole_app())


def app_for(args: Sequence[str]) -> typer.Typer:
    """The app to run `args` with. When they start with a command's name: an app of that command
    alone (the same root options, settings and command, so the same parsing, output and exit
    codes), which imports only that command's module and builds only its parser: typer builds
    the parser of every registered command on each run, and the modules of ~20 commands cost
    ~60 ms together. Anything else (`--help`, `--version`, no command, a misspelt one) gets the
    whole app."""
    name = args[0] if args else ""
    return build([name]) if name in COMMANDS else whole_app()


def _on_broken_pipe(console: Any) -> None:
    """rich's reaction to a closed stdout (help piped into `head`), with our exit code: 141, not 1."""
    console.quiet = True
    raise SystemExit(quiet_broken_pipe().exit_code)


def _quiet_rich_on_broken_pipe() -> None:
    """Before rich shows help (the one place it writes to stdout): `_on_broken_pipe`. Imported
    here, not at start-up: importing rich costs ~25 ms that a run of a command does not need."""
    import rich.console

    rich.console.Console.on_broken_pipe = _on_broken_pipe  # type: ignore[method-assign]


def main() -> None:
    """The console script's entry point."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on Ctrl-C is KeyboardInterrupt, handled per command
    atexit.register(gc.freeze)  # at exit, skip the final collection of torch's objects (~0.3 s of every command)
    app_for(sys.argv[1:])()
