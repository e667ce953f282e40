"""The options commands share, defined once: Enum choices, option types, and the bundles a command takes whole.

A bundle (bundles.py) is a group of options that travel together: the model to load, sampling,
structured output, the presets' options (the training loop's are in train.py).
Choices are Enums, so that validation, `--help` and the completion scripts read the same list.
Nothing here imports torch: a bad value is answered before any heavy import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ..settings import GenerationSettings, SamplingSettings
from .bundles import Bundle, option
from .errors import click_errors
from .loader import ModelOptions

MODEL_PANEL = "Model"
SAMPLING_PANEL = "Sampling"
PROMPT_PANEL = "Prompt"
OUTPUT_PANEL = "Output"
STRUCTURED_PANEL = "Structured output"
PRESET_PANEL = "Preset"


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(str, Enum):
    """The named devices; `cuda:N` is accepted too (check_device)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Template(str, Enum):
    """The built-in chat templates; a Jinja file's path is accepted too (check_template)."""

    auto = "auto"
    chatml = "chatml"
    llama3 = "llama3"
    llama2 = "llama2"


class Length(str, Enum):
    short = "short"
    medium = "medium"
    long = "long"


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def choices(enum: type[Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1]


def choice(enum: type[Enum], *names: str, help: str, panel: str | None = None, show_default: bool | str = True, argument: str = "") -> Any:
    """An option (or the positional `argument` so named) taking one of `enum`'s values, as a plain string.

    The help shows the values; anything else is a usage error that lists them."""
    values = choices(enum)

    def check(value: str | None) -> str | None:
        if value is None or value in values:
            return value
        raise click_errors.UsageError(f"unknown {names[0] if names else argument} '{value}'; choose {_listed(values)}")

    metavar = "<" + "|".join(values) + ">"
    COMPLETION_CHOICES.update((name, values) for name in names if name.startswith("--"))
    if argument:
        return typer.Argument(help=f"{_listed(values)}: {help}", metavar=argument, callback=check)
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=show_default, metavar=metavar, callback=check)


def check_device(value: str) -> str:
    if value in choices(Device) or re.fullmatch(r"cuda:\d+", value):
        return value
    raise click_errors.UsageError(f"unknown --device '{value}'; choose auto, cpu, cuda, cuda:N or mps")


def check_template(value: str | None) -> str | None:
    if value is None or value in choices(Template) or Path(value).expanduser().is_file():
        return value
    raise click_errors.UsageError(f"unknown --template '{value}'; choose {', '.join(choices(Template))}, or a Jinja template file")


# Option values worth completing in a shell, by flag (every `choice` option adds its own); every other option that
# takes a value completes files.
COMPLETION_CHOICES: dict[str, tuple[str, ...]] = {"--device": choices(Device), "--template": choices(Template)}


def flag(*names: str, help: str, panel: str | None = None) -> Any:
    """An on/off option."""
    return typer.Option(*names, help=help, rich_help_panel=panel)


def value(*names: str, help: str, panel: str | None = None, show_default: bool | str = True, **extra: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=show_default, **extra)


# Options that commands take one by one.
ModelOpt = Annotated[
    str | None,
    value(
        "--model",
        "-m",
        help="GGUF file, model folder, or known model name. Default: $LLAMA_MODEL or smollm2-135m-instruct.",
        panel=MODEL_PANEL,
        show_default=False,
    ),
]
DtypeOpt = Annotated[
    str,
    choice(
        Dtype,
        "--dtype",
        help="auto on the CPU: the int4 fast path for Q4/Q8 GGUF files, else float32; float32 is the exact reference.",
        panel=MODEL_PANEL,
    ),
]
DeviceOpt = Annotated[str, value("--device", help="auto, cpu, cuda, cuda:N or mps.", panel=MODEL_PANEL, callback=check_device)]
ThreadsOpt = Annotated[
    int | None,
    value(
        "--threads",
        help="CPU threads (default: $LLAMA_THREADS, else the cores not busy with other work).",
        panel=MODEL_PANEL,
        show_default=False,
    ),
]
CtxOpt = Annotated[int | None, value("--ctx", help="Context window to use (default: the model's).", panel=MODEL_PANEL, show_default=False)]
NoCacheOpt = Annotated[bool, flag("--no-cache", help="Do not read or write the converted-weights cache.", panel=MODEL_PANEL)]
AdapterOpt = Annotated[
    str | None, value("--adapter", help="Apply a LoRA adapter folder written by llama finetune.", panel=MODEL_PANEL, show_default=False)
]
TemplateOpt = Annotated[
    str,
    value(
        "--template",
        help="Chat template: auto (the model's own), chatml, llama3, llama2, or a Jinja file.",
        panel=PROMPT_PANEL,
        callback=check_template,
    ),
]
ToolsOpt = Annotated[
    str | None,
    value(
        "--tools",
        help='A JSON file of tool schemas ({"type": "function", "function": {...}}) for chat templates that take tools.',
        panel=PROMPT_PANEL,
        show_default=False,
    ),
]
SeedOpt = Annotated[
    int | None, value("--seed", help="Seed for reproducible sampling (default: random).", panel=SAMPLING_PANEL, show_default=False)
]
StatsOpt = Annotated[bool, flag("--stats", help="Print token counts, speeds and the stop reason on stderr.", panel=OUTPUT_PANEL)]
ServerOpt = Annotated[
    str | None,
    value(
        "--server",
        envvar="LLAMA_SERVER",
        help="Run on the `llama serve` at this URL (default: $LLAMA_SERVER): no model load here.",
        panel="Model",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool,
    flag(
        "--json",
        help='JSON lines on stdout: one event per token, then a summary (its "data": the parsed value of a --schema, --regex, ... output).',
        panel=OUTPUT_PANEL,
    ),
]
PresetJsonOpt = Annotated[
    bool,
    flag(
        "--json",
        help='JSON lines on stdout: one event per token, then a summary whose "data" is {"answer", "quotes"} for qa '
        'and {"points"} for summarize --bullets.',
        panel=OUTPUT_PANEL,
    ),
]
JsonDocOpt = Annotated[
    bool, flag("--json", help="One JSON document on stdout instead of text.", panel=OUTPUT_PANEL)
]  # commands that do not stream


# --- The model to load ---------------------------------------------------------------------------------------------


def model_bundle(*, ctx: bool = True, adapter: bool = False) -> Bundle:
    """-m, --dtype, --device, --threads, --no-cache, and --ctx and --adapter where the command takes them."""
    parameters = [
        option("model", ModelOpt, None),
        option("dtype", DtypeOpt, Dtype.auto.value),
        option("device", DeviceOpt, "auto"),
        *([option("ctx", CtxOpt, None)] if ctx else []),
        option("threads", ThreadsOpt, None),
        option("no_cache", NoCacheOpt, False),
        *([option("adapter", AdapterOpt, None)] if adapter else []),
    ]
    return Bundle(ModelOptions, parameters)


# --- Sampling ------------------------------------------------------------------------------------------------------

_SAMPLING = SamplingSettings()
TemperatureOpt = Annotated[float, value("--temperature", "-t", help="0 = greedy (deterministic).", panel=SAMPLING_PANEL)]
TopKOpt = Annotated[int, value("--top-k", help="Keep the K most likely tokens (0 = off).", panel=SAMPLING_PANEL)]
TopPOpt = Annotated[float, value("--top-p", help="Nucleus sampling mass in (0, 1] (1 = off).", panel=SAMPLING_PANEL)]
MinPOpt = Annotated[
    float, value("--min-p", help="Drop tokens below this fraction of the top token's probability (0 = off).", panel=SAMPLING_PANEL)
]
RepeatPenaltyOpt = Annotated[float, value("--repeat-penalty", help="Penalise tokens already seen (1 = off).", panel=SAMPLING_PANEL)]
FrequencyPenaltyOpt = Annotated[
    float, value("--frequency-penalty", help="Subtract count x this from a seen token's logit.", panel=SAMPLING_PANEL)
]
PresencePenaltyOpt = Annotated[
    float, value("--presence-penalty", help="Subtract this once from every seen token's logit.", panel=SAMPLING_PANEL)
]
PENALTIES = [
    option("repeat_penalty", RepeatPenaltyOpt, _SAMPLING.repetition_penalty),
    option("frequency_penalty", FrequencyPenaltyOpt, _SAMPLING.frequency_penalty),
    option("presence_penalty", PresencePenaltyOpt, _SAMPLING.presence_penalty),
]


def _sampling(*, repeat_penalty: float, **values: Any) -> dict[str, Any]:
    return {"repetition_penalty": repeat_penalty, **values}


# make_settings keywords: temperature, top_k, top_p, min_p, the penalties and seed; defaults from settings.SamplingSettings.
SAMPLING = Bundle(
    _sampling,
    [
        option("temperature", TemperatureOpt, _SAMPLING.temperature),
        option("top_k", TopKOpt, _SAMPLING.top_k),
        option("top_p", TopPOpt, _SAMPLING.top_p),
        option("min_p", MinPOpt, _SAMPLING.min_p),
        *PENALTIES,
        option("seed", SeedOpt, GenerationSettings.seed),
    ],
)


# --- Structured output (generate, chat) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StructuredOptions:
    """--schema, --schema-multi, --regex, --choice, --grammar or --json-output (at most one), and --no-schema-prompt."""

    schema: str | None = None
    schema_multi: str | None = None
    regex: str | None = None
    choice: str | None = None
    grammar: str | None = None
    json_object: bool = False
    no_schema_prompt: bool = False

    def given(self) -> dict[str, Any]:
        """The constraint options by field name (`json_output` for --json-output), as given."""
        return {
            "schema": self.schema,
            "schema_multi": self.schema_multi,
            "regex": self.regex,
            "choice": self.choice,
            "grammar": self.grammar,
            "json_output": self.json_object,
        }

    def spec(self) -> Any:
        """The schema.Spec asked for, or None for free text (bad values are usage errors)."""
        from ..schema import spec_from_options

        given = self.given()
        json_object = given.pop("json_output")
        return spec_from_options(**given, json_object=json_object)


def _text_option(flag_name: str, help: str) -> Any:
    return Annotated[str | None, value(flag_name, help=help, panel=STRUCTURED_PANEL, show_default=False)]


STRUCTURED = Bundle(
    StructuredOptions,
    [
        option(
            "schema",
            _text_option(
                "--schema",
                "Output JSON matching this schema: inline JSON, a .json file, or fields like 'name, age int, bio: one sentence'.",
            ),
            None,
        ),
        option(
            "schema_multi", _text_option("--schema-multi", "Output a JSON array of objects matching this schema (forms as --schema)."), None
        ),
        option("regex", _text_option("--regex", "Output text matching this regular expression (whole)."), None),
        option("choice", _text_option("--choice", "Output exactly one of these comma-separated items, e.g. yes,no,maybe."), None),
        option("grammar", _text_option("--grammar", "Output text in this grammar: a Lark (or llama.cpp GBNF) file."), None),
        option(
            "json_object",
            Annotated[
                bool,
                flag(
                    "--json-output", help='Output any JSON object (shorthand for --schema \'{"type": "object"}\').', panel=STRUCTURED_PANEL
                ),
            ],
            False,
        ),
        option(
            "no_schema_prompt",
            Annotated[
                bool,
                flag(
                    "--no-schema-prompt",
                    help="Do not describe the constraint to the model in the system message (chat prompts show it by default).",
                    panel=STRUCTURED_PANEL,
                ),
            ],
            False,
        ),
    ],
)


def with_schema_note(system: str | None, note: str) -> str:
    """The system message with the constraint's description appended (the whole message if there was none)."""
    return f"{system.rstrip()}\n\n{note}" if system and system.strip() else note


# --- The presets (summarize, translate, qa) ------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetOptions:
    """What every preset takes; None means the preset's own value (presets/recipes.py)."""

    model: ModelOptions
    max_tokens: int | None
    temperature: float | None
    seed: int | None
    lookup: int | None
    penalties: dict[str, Any]  # make_settings keywords: repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram
    template: str
    show_prompt: bool
    json_output: bool
    stats: bool


def _preset(
    *, max_tokens: int | None, temperature: float | None, seed: int | None, lookup: int | None, no_repeat_ngram: int | None, **values: Any
) -> PresetOptions:
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    penalties = {
        **_sampling(**{k: values.pop(k) for k in ("repeat_penalty", "frequency_penalty", "presence_penalty")}),
        "no_repeat_ngram": no_repeat_ngram,
    }
    model = MODEL.build(**{p.name: values.pop(p.name) for p in MODEL.parameters})  # ModelOptions refuses --ctx below 1
    return PresetOptions(model, max_tokens, temperature, seed, lookup, penalties, **values)


MODEL = model_bundle()
PRESET = Bundle(
    _preset,
    [
        option(
            "max_tokens",
            Annotated[
                int | None,
                value(
                    "--max-tokens",
                    "-n",
                    help="Most tokens per answer (and per partial summary). Default: the preset's.",
                    panel=SAMPLING_PANEL,
                    show_default=False,
                ),
            ],
            None,
        ),
        option(
            "temperature",
            Annotated[
                float | None,
                value("--temperature", "-t", help="0 = greedy (the presets' default).", panel=SAMPLING_PANEL, show_default=False),
            ],
            None,
        ),
        option("seed", SeedOpt, None),
        option(
            "lookup",
            Annotated[
                int | None,
                value(
                    "--lookup",
                    help="Prompt-lookup decoding: at most N tokens drafted from the input per step (0 = off). Default: 8 with"
                    " --dtype float32, where the text stays the same; off on the int4 fast path, where rounding can change it.",
                    panel=SAMPLING_PANEL,
                    show_default=False,
                ),
            ],
            None,
        ),
        *PENALTIES,
        option(
            "no_repeat_ngram",
            Annotated[
                int | None,
                value(
                    "--no-repeat-ngram",
                    help=(
                        "Never repeat a run of N generated tokens, which ends the loops a small model falls into (0 = off). "
                        "Default: the preset's."
                    ),
                    panel=SAMPLING_PANEL,
                    show_default=False,
                ),
            ],
            None,
        ),
        option("template", TemplateOpt, "auto"),
        option(
            "show_prompt",
            Annotated[bool, flag("--show-prompt", help="Print the rendered prompt(s) instead of running the model.", panel=PROMPT_PANEL)],
            False,
        ),
        option("json_output", PresetJsonOpt, False),
        option("stats", StatsOpt, False),
        *MODEL.parameters,
    ],
)
