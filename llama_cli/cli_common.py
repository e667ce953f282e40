"""What every command shares: option types, error handling, reading input, writing output.

The contract: model text goes to stdout, flushed as it is produced; everything else (errors,
warnings, stats, progress) goes to stderr. Errors are one line and an exit code: 2 for usage, 1
for runtime failures, 130 when interrupted, 141 when stdout was closed (as a Unix tool killed by
SIGPIPE). `--debug` (or LLAMA_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import LlamaError, UsageError
from .textio import decode_text

try:
    from typer._click import exceptions as click_errors  # newer Typer vendors click
except ImportError:  # pragma: no cover - older Typer uses click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

F = TypeVar("F", bound=Callable[..., Any])

MODEL_PANEL = "Model"
SAMPLING_PANEL = "Sampling"
OUTPUT_PANEL = "Output"

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="GGUF file, model folder, or known model name. Default: $LLAMA_MODEL or smollm2-135m-instruct.", rich_help_panel=MODEL_PANEL, show_default=False),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16 (auto on the CPU: the int4 fast path for Q4/Q8 GGUF files, else float32; float32 is the exact reference).", rich_help_panel=MODEL_PANEL)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL_PANEL)]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: $LLAMA_THREADS, else the cores not busy with other work).", rich_help_panel=MODEL_PANEL, show_default=False)]
CtxOpt = Annotated[int | None, typer.Option("--ctx", help="Context window to use (default: the model's).", rich_help_panel=MODEL_PANEL, show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the converted-weights cache.", rich_help_panel=MODEL_PANEL)]
AdapterOpt = Annotated[str | None, typer.Option("--adapter", help="Apply a LoRA adapter folder written by llama finetune.", rich_help_panel=MODEL_PANEL, show_default=False)]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.", rich_help_panel=SAMPLING_PANEL)]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy (deterministic).", rich_help_panel=SAMPLING_PANEL)]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the K most likely tokens (0 = off).", rich_help_panel=SAMPLING_PANEL)]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1] (1 = off).", rich_help_panel=SAMPLING_PANEL)]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Drop tokens below this fraction of the top token's probability (0 = off).", rich_help_panel=SAMPLING_PANEL)]
RepeatPenaltyOpt = Annotated[float, typer.Option("--repeat-penalty", help="Penalise tokens already seen (1 = off).", rich_help_panel=SAMPLING_PANEL)]
FrequencyPenaltyOpt = Annotated[float, typer.Option("--frequency-penalty", help="Subtract count x this from a seen token's logit.", rich_help_panel=SAMPLING_PANEL)]
PresencePenaltyOpt = Annotated[float, typer.Option("--presence-penalty", help="Subtract this once from every seen token's logit.", rich_help_panel=SAMPLING_PANEL)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for reproducible sampling (default: random).", rich_help_panel=SAMPLING_PANEL, show_default=False)]
StatsOpt = Annotated[bool, typer.Option("--stats", help="Print token counts, speeds and the stop reason on stderr.", rich_help_panel=OUTPUT_PANEL)]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout: one event per token, then a summary.", rich_help_panel=OUTPUT_PANEL)]
JsonDocOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout instead of text.", rich_help_panel=OUTPUT_PANEL)]  # commands that do not stream

STRUCTURED_PANEL = "Structured output"
SchemaOpt = Annotated[str | None, typer.Option("--schema", help="Output JSON matching this schema: inline JSON, a .json file, or fields like 'name, age int, bio: one sentence'.", rich_help_panel=STRUCTURED_PANEL, show_default=False)]
SchemaMultiOpt = Annotated[str | None, typer.Option("--schema-multi", help="Output a JSON array of objects matching this schema (forms as --schema).", rich_help_panel=STRUCTURED_PANEL, show_default=False)]
RegexOpt = Annotated[str | None, typer.Option("--regex", help="Output text matching this regular expression (whole).", rich_help_panel=STRUCTURED_PANEL, show_default=False)]
ChoiceOpt = Annotated[str | None, typer.Option("--choice", help="Output exactly one of these comma-separated items, e.g. yes,no,maybe.", rich_help_panel=STRUCTURED_PANEL, show_default=False)]
GrammarOpt = Annotated[str | None, typer.Option("--grammar", help="Output text in this grammar: a Lark (or llama.cpp GBNF) file.", rich_help_panel=STRUCTURED_PANEL, show_default=False)]
JsonObjectOpt = Annotated[bool, typer.Option("--json-output", help="Output any JSON object (shorthand for --schema '{\"type\": \"object\"}').", rich_help_panel=STRUCTURED_PANEL)]
NoSchemaPromptOpt = Annotated[bool, typer.Option("--no-schema-prompt", help="Do not describe the constraint to the model in the system message (chat prompts show it by default).", rich_help_panel=STRUCTURED_PANEL)]
TruncateOkOpt = Annotated[bool, typer.Option("--truncate-ok", help="Exit 0 even when -n cuts the constrained value short (it is then not valid).", rich_help_panel=STRUCTURED_PANEL)]


def with_schema_note(system: str | None, note: str) -> str:
    """The system message with the constraint's description appended (the whole message if there was none)."""
    return f"{system.rstrip()}\n\n{note}" if system and system.strip() else note


def debug_enabled() -> bool:
    return os.environ.get("LLAMA_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `llama: error: message` on stderr and return the Exit to raise."""
    print(f"llama: error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def quiet_broken_pipe() -> typer.Exit:
    # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return typer.Exit(141)


def handles_errors(command: F) -> F:
    """Turn LlamaError, Ctrl-C, a closed stdout and unexpected errors into one line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click_errors.ClickException):
            raise  # exits and usage errors are click's to report
        except LlamaError as error:
            if debug_enabled():
                raise
            raise fail(str(error), error.exit_code) from None
        except KeyboardInterrupt:
            print("llama: interrupted", file=sys.stderr, flush=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise quiet_broken_pipe() from None
        except Exception as error:  # a bug: still one line unless debugging
            if debug_enabled():
                raise
            raise fail(f"internal error: {type(error).__name__}: {error} (set LLAMA_DEBUG=1 for the traceback)") from None

    return wrapper  # type: ignore[return-value]


def read_stdin_text() -> str:
    """All of stdin as text; binary or non-UTF-8 input is an error, not mojibake."""
    return decode_text(sys.stdin.buffer.read(), "stdin")


def read_documents(paths: list[str] | None, *, option: str = "FILE") -> str:
    """The files in order (stdin for none or '-'), joined by a blank line. Empty input is an error."""
    texts = []
    for path in paths or ["-"]:
        if path == "-":
            if sys.stdin.isatty():
                raise UsageError(f"give a {option} or pipe text on stdin")
            texts.append(decode_text(sys.stdin.buffer.read(), "stdin"))
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise LlamaError(f"cannot read {path}: {error.strerror or error}") from None
        texts.append(decode_text(data, path))
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        raise LlamaError(f"the input is empty ({', '.join(paths or ['stdin'])}): give some text to work on")
    return text


def prompt_from(argument: str | None, *, what: str = "prompt") -> str:
    """The argument, or stdin when the argument is '-' or absent and stdin is not a terminal."""
    if argument is not None and argument != "-":
        return argument
    if argument is None and sys.stdin.isatty():
        raise typer.BadParameter(f"give a {what} as an argument, or pipe it on stdin")
    return read_stdin_text()


def write_out(text: str) -> None:
    """Model text to stdout, flushed at once so pipes see it as it is produced."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def ensure_utf8_stdout() -> None:
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")


def print_warnings_as_lines() -> None:
    """Show library warnings (e.g. an unwritable cache) as `llama: warning: ...` lines on stderr."""
    import warnings

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        print(f"llama: warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = show
