"""`llama tokenize`: the token ids a model sees for a text or a conversation; reads only the tokenizer (no torch)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..textio import write_out
from .errors import handles_errors
from .inputs import prompt_from, read_tools
from .options import ModelOpt, TemplateOpt, flag


@handles_errors
def tokenize(
    text: Annotated[
        str | None, typer.Argument(help="Text to tokenize; '-' or absent reads stdin.", metavar="TEXT", show_default=False)
    ] = None,
    model: ModelOpt = None,
    json_output: Annotated[bool, flag("--json", help='Print {"ids": [...], "tokens": [...]}.')] = False,
    count: Annotated[bool, flag("--count", help="Print only the number of tokens.")] = False,
    chat: Annotated[
        bool,
        flag(
            "--chat",
            help="TEXT is a JSON file of messages ('-' or absent: stdin): show the conversation rendered through the chat template,"
            " special tokens in \\[brackets].",
        ),
    ] = False,
    template: TemplateOpt = "auto",
    tools: Annotated[
        str | None,
        typer.Option("--tools", help="With --chat: a JSON file of tool schemas for templates that take tools.", show_default=False),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Accepted for symmetry with the other commands; tokenize reads no weights.", hidden=True)
    ] = False,
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
    from ..chat_template import encode_conversation, template_text
    from ..conversation import read_messages
    from ..detokenize import mark_special
    from ..registry import resolve_model
    from ..tokenizer import count_tokens, load_vocabulary

    tool_list = read_tools(tools, chat=chat)
    if chat:  # read the input before the tokenizer, so bad input fails fast
        messages = read_messages("-" if text is None else text, conversation=False)
    else:
        source = prompt_from(text, what="text")
    tokenizer, model_template = load_vocabulary(resolve_model(model))
    if count and not chat:
        write_out(f"{count_tokens(tokenizer, source)}\n")  # in bounded memory, however long the text
        return
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
