"""`llama chat`: a conversation on a terminal (repl.py) or from a pipe, one user turn per line."""

from __future__ import annotations

import sys
from typing import Annotated, Any

from ..errors import UsageError
from .bundles import bundled
from .errors import handles_errors
from .inputs import read_tools
from .loader import ModelOptions, load_model
from .options import (
    OUTPUT_PANEL,
    PROMPT_PANEL,
    SAMPLING,
    SAMPLING_PANEL,
    STRUCTURED,
    ServerOpt,
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
def chat(
    *,
    system: Annotated[
        str | None, value("--system", "-s", help="System message (replaces the one in --history).", panel=PROMPT_PANEL, show_default=False)
    ] = None,
    max_tokens: Annotated[int, value("--max-tokens", "-n", help="Most tokens in each reply.", panel=SAMPLING_PANEL)] = 512,
    sampling: dict[str, Any],
    template: TemplateOpt = "auto",
    history: Annotated[
        str | None,
        value(
            "--history",
            help="Start from a conversation saved with /save (a JSON list of messages).",
            panel=PROMPT_PANEL,
            show_default=False,
        ),
    ] = None,
    tools: ToolsOpt = None,
    markdown: Annotated[bool, flag("--markdown", help="Render replies as Markdown (on a terminal only).", panel=OUTPUT_PANEL)] = False,
    json_lines: Annotated[
        bool,
        flag(
            "--json",
            help='From a pipe: one JSON line per reply ({"turn", "text", "stop_reason", ...}) instead of the text.',
            panel=OUTPUT_PANEL,
        ),
    ] = False,
    stats: Annotated[
        bool, flag("--stats", help="After each reply, print its token counts and speeds on stderr.", panel=OUTPUT_PANEL)
    ] = False,
    structured: StructuredOptions,
    model_options: ModelOptions,
    server: ServerOpt = None,
) -> None:
    """Chat with the model; the conversation stays in the KV cache, so each turn prefills only what is new.

    On a terminal: an interactive session (/help lists the commands). From a pipe: one user turn per line, only the replies on stdout.

    [b]Examples[/b]

      llama chat -s "You are a terse assistant."

      printf 'Hi\\nAnd then?\\n' | llama chat -t 0 -n 60

      llama chat --history talk.json --markdown

      echo "Paris" | llama chat -t 0 --schema 'city, country, population int'

      llama chat --server http://127.0.0.1:8080
    """
    from ..conversation import read_messages
    from ..settings import make_settings

    spec = structured.spec()
    settings = make_settings(max_tokens=max_tokens, **sampling, constraint=spec)
    if json_lines and sys.stdin.isatty():
        raise UsageError("--json is for piped input (one JSON line per reply); on a terminal, chat interactively")
    from ..repl import Repl, run_scripted

    messages = read_messages(history) if history is not None else []
    session: Any
    if server:  # a running `llama serve` holds the model and the conversation's cache: no torch here (serve/chat_client.py)
        from ..serve.chat_client import RemoteChatSession
        from ..serve.client import refuse_local_only

        refuse_local_only(model=model_options.model, adapter=model_options.adapter, tools=tools, template=template, **structured.given())
        session = RemoteChatSession(server.rstrip("/"), settings, system=system, context=model_options.ctx, messages=messages)
    else:
        from ..chat import ChatSession
        from ..chat_template import check_builtin_template
        from ..progress import Reporter

        tool_list = read_tools(tools, chat=True)
        llm = load_model(model_options)
        check_builtin_template(llm.tokenizer, template)
        session = ChatSession(
            llm,
            settings,
            system=system,
            template=template,
            context=model_options.ctx,
            messages=messages,
            tools=tool_list,
            progress=Reporter(),
        )
        if spec is not None and not structured.no_schema_prompt:
            session.set_system(with_schema_note(session.system, spec.prompt_note()))
    if history is not None:
        print(f"[loaded {len(messages)} messages from {history}]", file=sys.stderr)
    if sys.stdin.isatty():
        Repl(session, markdown=markdown and sys.stdout.isatty(), stats=stats).run()
    else:
        run_scripted(session, stats=stats, as_json=json_lines)
