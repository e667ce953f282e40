"""The OpenAI wire format: request bodies checked into plain records, replies and errors built as dicts.

Pure data, no torch and no model: `parse_chat` / `parse_completion` turn a JSON body into a
`CompletionRequest` or raise `APIError` (a 4xx with OpenAI's error shape, naming the field);
the `*_response` / `*_chunk` builders write what the official clients expect.

Unknown fields are ignored, as OpenAI's own server does with fields it does not use. Sampling
fields left out take `llama generate`'s defaults (temperature 0.8, top_k 40, top_p 0.95,
min_p 0.05), not OpenAI's, so a request with no options samples like the CLI.

References: OpenAI's API reference (chat/completions, completions, error codes), the `openai`
Python client's types; llama.cpp's server README for /tokenize, /detokenize and the extensions.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["chat", "completion"]
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "interrupted": "stop"}
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """A reply other than 200, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class CompletionRequest:
    """A checked /v1/chat/completions or /v1/completions body."""

    kind: Kind
    model: str
    messages: list[dict[str, Any]] | None = None  # chat: the conversation to render
    prompt: str | list[int] | None = None  # completion: text, or token ids
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None  # None: up to the end of the context
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: not asked; else how many alternatives per token
    truncate: bool = False
    response_format: dict[str, Any] | None = None
    return_token_ids: bool = False  # extension (`llama generate --server`): ids, raw stop reasons and the seed in the stream
    options: dict[str, Any] = field(default_factory=dict)  # api.make_settings keywords: sampling, seed, stop, ignore_eos


# ---------------------------------------------------------------- field checks


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad(f"the body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _typed(body: dict[str, Any], name: str, kinds: tuple[type, ...], label: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:  # JSON true is not a number
        raise bad(f"{name}: expected {label}, got a boolean", name, "invalid_type")
    if not isinstance(value, kinds):
        raise bad(f"{name}: expected {label}, got {type(value).__name__}", name, "invalid_type")
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = _typed(body, name, (int,) if integer else (int, float), "an integer" if integer else "a number")
    if value is not None and not low <= value <= high:
        raise bad(f"{name}: {value} is out of range [{low:g}, {high:g}]", name, "out_of_range")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    return bool(_typed(body, name, (bool,), "true or false"))


def _text_content(content: Any, where: str) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(
                    f'{where}.content[{j}]: only text parts are supported ({{"type": "text", "text": "..."}})',
                    f"{where}.content",
                    "invalid_content",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"{where}.content: expected a string or a list of text parts", f"{where}.content", "invalid_type")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad(
            "messages: expected a list of messages", "messages", "invalid_type" if messages is not None else "missing_required_parameter"
        )
    if not messages:
        raise bad("messages: the list is empty; give at least one message", "messages", "empty_array")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where}: expected an object with role and content", where, "invalid_type")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise bad(f"{where}.role: {role!r} is not one of {', '.join(CHAT_ROLES)}", f"{where}.role", "invalid_value")
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise bad(f"{where}.content: missing", f"{where}.content", "missing_required_parameter")
        checked: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": "" if content is None else _text_content(content, where),
        }
        for key in ("tool_calls", "tool_call_id", "name"):
            if key in message:
                checked[key] = message[key]
        out.append(checked)
    return out


def _prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        if not prompt:
            raise bad("prompt: the prompt is empty", "prompt", "empty_prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt:
        raise bad("prompt: one prompt per request (a string or a list of token ids)", "prompt", "invalid_value")
    if prompt is None:
        raise bad("prompt: missing", "prompt", "missing_required_parameter")
    raise bad("prompt: expected a non-empty string or list of token ids", "prompt", "invalid_type")


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop: expected a non-empty string or a list of them", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise bad(f"stop: at most {MAX_STOPS} strings, got {len(stops)}", "stop", "invalid_value")
    return stops


def _common(body: dict[str, Any], kind: Kind, max_n: int) -> CompletionRequest:
    model = body.get("model", "")
    if not isinstance(model, str):
        raise bad("model: expected a string", "model", "invalid_type")
    max_tokens = _number(body, "max_tokens", 1, 1 << 30, integer=True)
    if kind == "chat":
        max_tokens = _number(body, "max_completion_tokens", 1, 1 << 30, integer=True) or max_tokens
    n = _number(body, "n", 1, 1 << 30, integer=True) or 1
    if n > max_n:
        raise bad(f"n: {n} is more than this server decodes at once ({max_n}, its --parallel)", "n", "n_too_large")
    stream_options = _typed(body, "stream_options", (dict,), "an object") or {}
    options: dict[str, Any] = {"stop": _stops(body), "ignore_eos": _flag(body, "ignore_eos")}
    for name, key, low, high, integer in (
        ("temperature", "temperature", 0, 2, False),
        ("top_p", "top_p", 0, 1, False),
        ("top_k", "top_k", 0, 1 << 30, True),
        ("min_p", "min_p", 0, 1, False),
        ("repeat_penalty", "repetition_penalty", 0, 10, False),
        ("presence_penalty", "presence_penalty", -2, 2, False),
        ("frequency_penalty", "frequency_penalty", -2, 2, False),
        ("seed", "seed", -(1 << 63), (1 << 63) - 1, True),
    ):
        value = _number(body, name, low, high, integer=integer)
        if value is not None:
            options[key] = value
    if options.get("top_p") == 0:
        raise bad("top_p: must be above 0", "top_p", "out_of_range")
    if options.get("repetition_penalty") == 0:
        raise bad("repeat_penalty: must be above 0 (1 = off)", "repeat_penalty", "out_of_range")
    response_format = _typed(body, "response_format", (dict,), "an object")
    return CompletionRequest(
        kind=kind, model=model, max_tokens=max_tokens, n=n, stream=_flag(body, "stream"),
        include_usage=bool(_typed(stream_options, "include_usage", (bool,), "true or false")),
        truncate=_flag(body, "truncate"),
        return_token_ids=_flag(body, "return_token_ids"), response_format=response_format, options=options,
    )  # fmt: skip


def parse_chat(body: dict[str, Any], *, max_n: int) -> CompletionRequest:
    request = _common(body, "chat", max_n)
    request.messages = _messages(body)
    tools = _typed(body, "tools", (list,), "a list of tools")
    request.tools = tools or None
    if _flag(body, "logprobs"):
        request.logprobs = _number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True) or 0
    elif body.get("top_logprobs"):
        raise bad('top_logprobs: needs "logprobs": true', "top_logprobs", "invalid_value")
    return request


def parse_completion(body: dict[str, Any], *, max_n: int) -> CompletionRequest:
    request = _common(body, "completion", max_n)
    request.prompt = _prompt(body)
    if _flag(body, "echo"):
        raise bad("echo: not supported", "echo", "unsupported_parameter")
    logprobs = _number(body, "logprobs", 0, MAX_TOP_LOGPROBS, integer=True)
    request.logprobs = logprobs
    return request


def context_error(prompt_tokens: int, max_tokens: int | None, context: int, param: str = "messages") -> APIError:
    if max_tokens is None:
        message = f"the prompt has {prompt_tokens} tokens, which leaves no room in the context window of {context} tokens"
    else:
        message = (
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: "
            f"{prompt_tokens + max_tokens} exceed the context window of {context} tokens"
        )
    return bad(
        message + '; shorten the prompt, lower max_tokens, or send "truncate": true to keep the end of the prompt',
        param,
        "context_length_exceeded",
    )


# ---------------------------------------------------------------- replies


def new_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass
class TokenLogprob:
    """One generated token and its alternatives, as text."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(a, b) for a, b in t.top]} for t in items], "refusal": None}


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [dict(t.top) for t in items],
        "text_offset": offsets,
    }


def envelope(kind: Kind, rid: str, model: str, choices: list[dict[str, Any]], *, chunk: bool, created: int | None = None) -> dict[str, Any]:
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {
        "id": rid,
        "object": obj + (".chunk" if chunk and kind == "chat" else ""),
        "created": created or int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }


def choice(
    kind: Kind, index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None, *, delta: bool, first: bool = False
) -> dict[str, Any]:
    if kind == "completion":
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    if delta:
        body: dict[str, Any] = {"role": "assistant", "content": text} if first else ({"content": text} if text or finish is None else {})
        return {"index": index, "delta": body, "logprobs": logprobs, "finish_reason": finish}
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": logprobs,
        "finish_reason": finish,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
