"""`llama generate`: continue a prompt, streaming the text to stdout (render.py prints it)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ..errors import LlamaError, UsageError
from ..settings import GenerationSettings, context_window
from .bundles import bundled
from .errors import handles_errors
from .inputs import prompt_from, read_tools
from .loader import ModelOptions, load_model
from .options import (
    OUTPUT_PANEL,
    PROMPT_PANEL,
    SAMPLING,
    SAMPLING_PANEL,
    STRUCTURED,
    STRUCTURED_PANEL,
    JsonOpt,
    ServerOpt,
    StatsOpt,
    StructuredOptions,
    TemplateOpt,
    ToolsOpt,
    flag,
    model_bundle,
    value,
    with_schema_note,
)


@handles_errors
@bundled(sampling=SAMPLING, structured=STRUCTURED, model_options=model_bundle(adapter=True))
def generate(
    *,
    prompt: Annotated[
        str | None, typer.Argument(help="Text to continue; '-' or absent reads stdin.", metavar="PROMPT", show_default=False)
    ] = None,
    max_tokens: Annotated[
        int, value("--max-tokens", "-n", help="Most tokens to generate.", panel=SAMPLING_PANEL)
    ] = GenerationSettings.max_tokens,
    sampling: dict[str, Any],
    stop: Annotated[
        list[str] | None,
        value("--stop", help="End the text at this string (repeatable); it is not printed.", panel=SAMPLING_PANEL, show_default=False),
    ] = None,
    ignore_eos: Annotated[
        bool, flag("--ignore-eos", help="Never stop at end-of-sequence: produce exactly -n tokens.", panel=SAMPLING_PANEL)
    ] = False,
    samples: Annotated[int, value("--samples", help="Completions of the same prompt (sample i uses seed+i).", panel=SAMPLING_PANEL)] = 1,
    lookup: Annotated[
        int,
        value(
            "--lookup",
            help="Prompt-lookup decoding: draft up to N tokens copied from the prompt and verify them in one pass (0 = off). Faster"
            " when the text repeats its prompt; the same text with --dtype float32 (on the int4 fast path rounding can change it).",
            panel=SAMPLING_PANEL,
        ),
    ] = 0,
    chat: Annotated[bool, flag("--chat", help="Wrap the prompt as a user turn in the model's chat template.", panel=PROMPT_PANEL)] = False,
    system: Annotated[
        str | None, value("--system", "-s", help="System message (implies --chat).", panel=PROMPT_PANEL, show_default=False)
    ] = None,
    template: TemplateOpt = "auto",
    tools: ToolsOpt = None,
    truncate: Annotated[
        bool,
        flag(
            "--truncate", help="If the prompt does not fit the context, keep its end (and say so) instead of refusing.", panel=PROMPT_PANEL
        ),
    ] = False,
    json_output: JsonOpt = False,
    logprobs: Annotated[
        int,
        value(
            "--logprobs",
            help="With --json, the top-K alternatives of every token (the model's own, before temperature, filters and any constraint).",
            panel=OUTPUT_PANEL,
        ),
    ] = 0,
    stats: StatsOpt = False,
    structured: StructuredOptions,
    truncate_ok: Annotated[
        bool,
        flag("--truncate-ok", help="Exit 0 even when -n cuts the constrained value short (it is then not valid).", panel=STRUCTURED_PANEL),
    ] = False,
    model_options: ModelOptions,
    server: ServerOpt = None,
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
        from ..serve.client import refuse_local_only, remote_generate

        given = {"lookup": lookup, "logprobs": logprobs, "tools": tools, "template": template, **structured.given()}
        refuse_local_only(model=model_options.model, adapter=model_options.adapter, **given)
        options = {"max_tokens": max_tokens, **sampling, "stop": stop or None, "ignore_eos": ignore_eos}
        options["repeat_penalty"] = options.pop("repetition_penalty")  # the server's request field
        text = prompt_from(prompt)
        return remote_generate(
            server,
            text,
            chat=chat,
            system=system,
            samples=samples,
            options=options,
            json_output=json_output,
            stats=stats,
            truncate=truncate,
        )
    from ..settings import make_settings

    spec = structured.spec()
    settings = make_settings(
        max_tokens=max_tokens,
        **sampling,
        stop=stop,
        ignore_eos=ignore_eos,
        samples=samples,
        logprobs=logprobs,
        lookup=lookup,
        constraint=spec,
    )
    wants_chat = chat or system is not None
    if spec is not None and wants_chat and not structured.no_schema_prompt:
        system = with_schema_note(system, spec.prompt_note())
    if logprobs and not json_output:
        raise UsageError("--logprobs goes with --json (plain text has no place for them)")
    tool_list = read_tools(tools, chat=wants_chat)
    text = prompt_from(prompt)
    if not text:
        raise LlamaError("the prompt is empty: give some text to continue")
    llm = load_model(model_options)
    from ..api import fit_context
    from ..chat_template import check_builtin_template, encode_conversation, template_text

    if wants_chat:
        check_builtin_template(llm.tokenizer, template)
    if tool_list is not None:
        turn = [{"role": "system", "content": system}] if system is not None else []
        messages = [*turn, {"role": "user", "content": text}]
        ids = encode_conversation(llm.tokenizer, template_text(llm.checkpoint.chat_template, template), messages, tools=tool_list)  # type: ignore[arg-type]
    else:
        ids = llm.encode_prompt(text, chat=chat, system=system, template=template)
    context = context_window(model_options.ctx, llm.context_length)
    kept = fit_context(ids, settings.max_tokens, context, truncate=truncate)
    if len(kept) < len(ids):
        print(
            f"llama: warning: prompt of {len(ids)} tokens cut to its last {len(kept)} to fit the {context}-token context with -n "
            f"{settings.max_tokens}",
            file=sys.stderr,
        )

    from ..generation import Generation
    from ..progress import Reporter
    from .render import print_generation

    generation = Generation(llm.model, llm.tokenizer, kept, settings, context=context, progress=Reporter())
    print_generation(generation, llm.tokenizer, as_json=json_output, stats=stats, truncate_ok=truncate_ok)
    if all(r.stop_reason == "eos" and not r.token_ids for r in generation.results):
        hint = "" if wants_chat or llm.checkpoint.chat_template is None else "; an instruct model answers questions with --chat"
        print(f"llama: warning: no text: the model ended the text at once (end-of-sequence){hint}", file=sys.stderr)
