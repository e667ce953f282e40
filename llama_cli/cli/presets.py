"""`llama summarize`, `llama translate` and `llama qa`: the recipes of presets/recipes.py, run by presets/run.py.

Built for pipes: input from files or stdin, the answer alone on stdout (ending in a newline),
progress, notes and stats on stderr (render_presets.py). Greedy unless -t is given; prompt-lookup
decoding is on by default (same output, faster where the answer copies the input).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from ..presets.split import MAX_CHUNKS
from .bundles import bundled
from .errors import handles_errors
from .inputs import read_documents
from .loader import load_model
from .options import PRESET, PRESET_PANEL, Length, PresetOptions, choice
from .render_presets import run_preset

MaxChunksOpt = Annotated[
    int,
    typer.Option(
        "--max-chunks",
        help="Refuse input that splits into more chunks than this (one step each, and a step takes seconds to minutes);"
        " the refusal says how many it needs.",
        rich_help_panel=PRESET_PANEL,
    ),
]

if TYPE_CHECKING:
    from ..presets.recipes import Recipe
    from ..presets.run import Runner

FilesArg = Annotated[
    list[str] | None, typer.Argument(help="Text files, read in order; none or '-' reads stdin.", metavar="FILE", show_default=False)
]


def make_runner(recipe: Recipe, options: PresetOptions) -> Runner:
    """Load the model and set up a Runner with `recipe`'s defaults for what the options leave out."""
    from ..chat_template import check_builtin_template
    from ..presets.run import Runner
    from ..settings import context_window, make_settings

    penalties = dict(options.penalties)
    if penalties.get("no_repeat_ngram") is None:
        penalties["no_repeat_ngram"] = recipe.no_repeat_ngram
    temperature = recipe.temperature if options.temperature is None else options.temperature
    settings = make_settings(temperature=temperature, seed=options.seed, lookup=options.lookup or 0, **penalties)
    llm = load_model(options.model)
    check_builtin_template(llm.tokenizer, options.template)
    if options.lookup is None and not llm.fast:
        # Lookup's verify pass gives the same text only where its arithmetic matches a decode step's:
        # on the float32 reference, not (yet) on the int4 fast path, so the default follows the path.
        settings = dataclasses.replace(settings, lookup=recipe.lookup)
    context = context_window(options.model.ctx, llm.context_length)
    return Runner(llm, settings, context=context, template=options.template, dry_run=options.show_prompt)


def _run(name: str, runner: Runner, steps, options: PresetOptions) -> None:  # type: ignore[no-untyped-def]
    run_preset(name, runner, steps, as_json=options.json_output, stats=options.stats, show_prompt=options.show_prompt)


@handles_errors
@bundled(options=PRESET)
def summarize(
    *,
    files: FilesArg = None,
    length: Annotated[
        str, choice(Length, "--length", "-l", help="short: 1-2 sentences, medium: a paragraph.", panel=PRESET_PANEL)
    ] = "medium",
    words: Annotated[
        int | None,
        typer.Option("--words", help="At most about N words (instead of --length).", rich_help_panel=PRESET_PANEL, show_default=False),
    ] = None,
    bullets: Annotated[bool, typer.Option("--bullets", help="A bulleted list, one line per point.", rich_help_panel=PRESET_PANEL)] = False,
    focus: Annotated[
        str | None,
        typer.Option("--focus", help="What the summary should concentrate on.", rich_help_panel=PRESET_PANEL, show_default=False),
    ] = None,
    max_chunks: MaxChunksOpt = MAX_CHUNKS,
    options: PresetOptions,
) -> None:
    """Summarize text from files or stdin; long input is summarized in chunks, then combined.

    [b]Examples[/b]

      cat report.txt | llama summarize > summary.txt

      llama summarize --length short --bullets notes.md

      llama summarize --focus "costs and deadlines" --stats minutes-*.txt

      llama summarize --bullets --json notes.md | tail -1 | jq -r '.data.points[]'
    """
    from ..presets import recipes, run

    fields = recipes.summary_fields(length=length, words=words, bullets=bullets, focus=focus)
    n = options.max_tokens or recipes.summary_tokens(length=length, words=words)
    document = read_documents(files)
    runner = make_runner(recipes.SUMMARIZE, options)
    runner.max_chunks = max_chunks
    runner.bullets = bullets  # '- ' lines, held by a constraint: a small model often answers "a list" with prose
    runner.structured = bullets and options.json_output  # the done event's "data": {"points": [...]}, each a string
    _run("summarize", runner, run.summarize(runner, document, fields, n), options)


@handles_errors
@bundled(options=PRESET)
def translate(
    *,
    to: Annotated[str, typer.Option("--to", help="The language to translate into.", rich_help_panel=PRESET_PANEL, show_default=False)],
    files: FilesArg = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from", help="The language of the input (default: the model guesses).", rich_help_panel=PRESET_PANEL, show_default=False
        ),
    ] = None,
    max_chunks: MaxChunksOpt = MAX_CHUNKS,
    options: PresetOptions,
) -> None:
    """Translate text from files or stdin, paragraph by paragraph, keeping blank lines and line breaks in place.

    Each line that is a unit of its own (a list item, a verse, a sentence ending the line) is translated on its own.

    The output is the translation only. -n caps each piece's translation (default: twice its length).

    [b]Examples[/b]

      echo "Where is the train station?" | llama translate --to French

      llama translate --from German --to English brief.txt > brief.en.txt
    """
    from ..presets import recipes, run

    fields = recipes.translate_fields(target=to, source=source)
    document = read_documents(files)
    runner = make_runner(recipes.TRANSLATE, options)
    runner.max_chunks = max_chunks
    _run("translate", runner, run.translate(runner, document, fields, options.max_tokens), options)


@handles_errors
@bundled(options=PRESET)
def qa(
    *,
    question: Annotated[str, typer.Argument(help="The question to answer from the context.", metavar="QUESTION")],
    context_files: Annotated[
        list[str] | None,
        typer.Option(
            "--context",
            "-c",
            help="A context file (repeatable; '-' is stdin). Default: stdin.",
            rich_help_panel=PRESET_PANEL,
            show_default=False,
        ),
    ] = None,
    quote: Annotated[
        bool,
        typer.Option(
            "--quote", help="After the answer, print the context sentences it rests on ('> ' lines).", rich_help_panel=PRESET_PANEL
        ),
    ] = False,
    options: PresetOptions,
) -> None:
    """Answer a question from the given context only; says so when the context does not tell.

    Context that does not fit is ranked in chunks by relevance (BM25) and the best ones are used.

    [b]Examples[/b]

      llama qa "When was the tower completed?" --context eiffel.txt

      curl -s https://example.com/faq.txt | llama qa --quote "How do I reset my password?"

      llama qa --json "Who built it?" -c eiffel.txt | tail -1 | jq .data
    """
    from ..presets import recipes, run

    if not question.strip():
        raise UsageError("the question is empty")
    n = options.max_tokens or recipes.QA.max_tokens
    document = read_documents(context_files, option="--context FILE")
    runner = make_runner(recipes.QA, options)
    runner.structured = options.json_output  # the done event's "data": {"answer": ..., "quotes": [context sentences, verbatim]}
    _run("qa", runner, run.answer(runner, document, question, n, quote=quote), options)
