"""Conversation and tool files: JSON lists of messages (`--history`, `/save`, `llama tokenize --chat`)
and of tool schemas (`--tools`), validated into the shapes chat templates take.

A message is {"role": "system"|"user"|"assistant"|"tool", "content": "..."}; an assistant message
may call tools ("tool_calls": [{"type": "function", "function": {"name", "arguments"}}], its
content then optional), and a tool message answers one ("tool_call_id", "name"). A tool is a JSON
schema as transformers' `apply_chat_template(tools=...)` takes it, usually
{"type": "function", "function": {"name", "description", "parameters"}}; it is passed on as written.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .chat_template import Message, Tool
from .errors import LlamaError

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_SHAPE = '{"role": "system"|"user"|"assistant"|"tool", "content": "..."}'


class ChatMessage(Message, total=False):
    interrupted: bool  # a reply cut short by Ctrl-C: kept in the history, marked


class HistoryError(LlamaError):
    """A conversation file that cannot be read or is not a list of messages."""


class ToolsError(LlamaError):
    """A tools file that cannot be read or is not a list of tool schemas."""


def _parse_message(item: Any, i: int, source: str) -> ChatMessage:
    if not isinstance(item, dict) or item.get("role") not in ROLES:
        raise HistoryError(f"{source}: message {i} is not {MESSAGE_SHAPE}")
    role, content, calls = item["role"], item.get("content"), item.get("tool_calls")
    if calls is not None and (role != "assistant" or not isinstance(calls, list) or not all(map(_is_call, calls))):
        raise HistoryError(
            f'{source}: message {i}: "tool_calls" belongs to an assistant message, as a list of '
            '{"type": "function", "function": {"name": "...", "arguments": {...}}}'
        )
    if not isinstance(content, str) and not (calls and content is None):
        raise HistoryError(f"{source}: message {i} is not {MESSAGE_SHAPE}")
    message: ChatMessage = {"role": role, "content": content or ""}
    if calls:
        message["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if key in item and role == "tool":
            if not isinstance(item[key], str):
                raise HistoryError(f'{source}: message {i}: "{key}" must be a string')
            message[key] = item[key]  # type: ignore[literal-required]
    if item.get("interrupted") is True:
        message["interrupted"] = True
    return message


def _is_call(call: Any) -> bool:
    return isinstance(call, dict) and isinstance(call.get("function"), dict) and isinstance(call["function"].get("name"), str)


def parse_messages(data: Any, source: str, *, conversation: bool = True) -> list[ChatMessage]:
    """Validate a JSON list of messages.

    With `conversation`, also require what a chat can continue: an optional system message first,
    then user and assistant messages taking turns, ending with an assistant reply; tool messages
    come right after an assistant message that calls tools, and the assistant goes on after them.
    """
    if not isinstance(data, list):
        raise HistoryError(f"{source}: expected a JSON list of messages, got {type(data).__name__}")
    messages = [_parse_message(item, i, source) for i, item in enumerate(data)]
    if not conversation:
        return messages
    start = 1 if messages and messages[0]["role"] == "system" else 0
    expected = "user"
    for i in range(start, len(messages)):
        role, previous = messages[i]["role"], messages[i - 1] if i > start else None
        if role == "tool":
            if previous is None or not (previous["role"] == "tool" or "tool_calls" in previous):
                raise HistoryError(f"{source}: message {i} is a tool result without an assistant message calling tools before it")
        elif role == "assistant" and previous is not None and previous["role"] == "tool":
            pass  # the reply that reads the tool results
        elif role != expected:
            raise HistoryError(
                f"{source}: message {i} should be a {expected} message (user and assistant take turns after any system message)"
            )
        else:
            expected = "assistant" if role == "user" else "user"
    if len(messages) > start and messages[-1]["role"] != "assistant":
        raise HistoryError(f"{source}: the conversation ends with a {messages[-1]['role']} message; it must end with an assistant reply")
    return messages


def _read_json(path: str | Path, error: type[LlamaError]) -> Any:
    source = str(path)
    try:
        text = sys.stdin.buffer.read().decode("utf-8") if source == "-" else Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{source}: not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply") from None


def read_messages(path: str | Path, *, conversation: bool = True) -> list[ChatMessage]:
    """Messages from a JSON file ('-' reads stdin)."""
    return parse_messages(_read_json(path, HistoryError), str(path), conversation=conversation)


def write_messages(path: str | Path, messages: Sequence[ChatMessage]) -> None:
    """Write the conversation whole or not at all: a temporary file beside it, then a rename, so a
    full disk or a kill mid-write leaves the previous file as it was."""
    target = Path(path).expanduser()
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as file:
            file.write(json.dumps(list(messages), ensure_ascii=False, indent=2) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise HistoryError(f"cannot write {path}: {error.strerror or error}") from None


def parse_tools(data: Any, source: str) -> list[Tool]:
    """Validate a JSON list of tool schemas: objects with a name, at the top or under "function"."""
    if isinstance(data, dict):  # one tool
        data = [data]
    if not isinstance(data, list):
        raise ToolsError(f"{source}: expected a JSON list of tools, got {type(data).__name__}")
    for i, tool in enumerate(data):
        named = (
            isinstance(tool, dict)
            and isinstance(tool.get("function", tool), dict)
            and isinstance(tool.get("function", tool).get("name"), str)
        )
        if not named:
            raise ToolsError(
                f"{source}: tool {i} is not "
                f'{{"type": "function", "function": {{"name": "...", "description": "...", "parameters": {{...}}}}}}'
            )
    return data


def read_tools(path: str | Path) -> list[Tool]:
    """Tool schemas from a JSON file ('-' reads stdin): a list, or one tool."""
    return parse_tools(_read_json(path, ToolsError), str(path))
