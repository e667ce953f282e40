"""`llama serve`: the OpenAI-compatible server, driven as clients drive it (the `openai` client and httpx).

The server runs in-process on 127.0.0.1 (uvicorn on a thread, its own float32 copy of the tiny
model from conftest.py, so the tiny model loaded here stays a free-standing reference: `llm` in
this module); readiness comes from /health. Replies are compared with `llm.generate` on the same
ids and settings. Auth and CORS
use starlette's TestClient, which needs no socket and no model. One test runs `llama serve` in
a subprocess to check that SIGTERM lets an open stream finish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn

from llama_cli.kv_cache import KVCache
from llama_cli.serve.app import ServeConfig, create_app

if TYPE_CHECKING:
    import openai  # imported where used: 1.5 s that collection would pay in every worker

PARALLEL = 3
HI = [{"role": "user", "content": "What is the capital of France?"}]


def wait_healthy(client: httpx.Client, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = client.get("/health")
            if response.status_code == 200:
                return response.json()  # type: ignore[no-any-return]
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise AssertionError("the server never became healthy")


def wait_idle(client: httpx.Client, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = client.get("/health").json()
        if health["active"] == 0 and health["waiting"] == 0:
            return health  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"the server is still busy: {health}")


@pytest.fixture(scope="session")
def llm(tiny_llm):  # type: ignore[no-untyped-def]
    """The reference replies here come from the tiny model, which the server runs too."""
    return tiny_llm


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[str]:
    from llama_cli import load

    own = load(tiny_model_path, dtype="float32")  # the server's: `llm` stays the reference
    app = create_app(ServeConfig(parallel=PARALLEL, ctx=256, queue=1, max_body=64 << 10), llm=own)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with httpx.Client(base_url=base, timeout=60) as client:
        wait_healthy(client)
    yield base
    uv.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


# ---------------------------------------------------------------- the model's per-row positions


def test_rows_at_their_own_positions_match_lone_decoding() -> None:
    """Three sequences of different lengths in scattered cache rows, decoded in one batch, give each
    one's logits from decoding it alone (a tiny float64 model, so the comparison is tight)."""
    import torch

    from llama_cli.config import ModelConfig
    from llama_cli.model import Transformer

    torch.manual_seed(0)
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=128, rope_theta=10000.0, context_length=64)
    model = Transformer(config).to(torch.float64).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (1, n), generator=g) for n in (5, 11, 2)]
    steps = torch.randint(0, 97, (3, 6), generator=g)
    with torch.inference_mode():
        alone = []
        for prompt, extra in zip(prompts, steps):
            cache = KVCache(model)
            cache.ensure(1, 32)
            cache.run(prompt.tolist())
            alone.append(torch.cat([cache.run(extra[None, t : t + 1].tolist(), prompt.shape[1] + t) for t in range(6)], dim=1))
        cache = KVCache(model)
        cache.ensure(5, 32)
        rows = [4, 0, 2]
        for prompt, row in zip(prompts, rows):
            cache.run(prompt.tolist(), rows=[row])
        lengths = [p.shape[1] for p in prompts]
        at = [[n + t for n in lengths] for t in range(6)]
        together = torch.cat([cache.run(steps[:, t : t + 1].tolist(), rows=rows, positions=at[t]) for t in range(6)], dim=1)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-9, rtol=1e-9)


# ---------------------------------------------------------------- replies equal local runs


def test_health_and_models(http: httpx.Client, client: openai.OpenAI) -> None:
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["context"] == 256 and health["free_rows"] == PARALLEL
    assert [m.object for m in client.models.list().data] == ["model"]


def test_chat_reply_equals_local_generation(client: openai.OpenAI, llm) -> None:  # type: ignore[no-untyped-def]
    reply = client.chat.completions.create(model="x", messages=HI, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    ids = llm.encode_chat(HI)
    local = llm.stream(ids, temperature=0, max_tokens=12)
    list(local)
    assert reply.choices[0].message.content == local.text
    assert reply.choices[0].finish_reason == {"eos": "stop", "length": "length"}[local.results[0].stop_reason]
    assert reply.usage is not None and reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == len(local.results[0].token_ids) + (local.results[0].stop_reason == "eos")


def test_completion_stream_equals_whole_reply(client: openai.OpenAI, llm) -> None:  # type: ignore[no-untyped-def]
    options: dict[str, Any] = {"model": "x", "prompt": "Once upon a time", "max_tokens": 10, "seed": 3, "temperature": 1.0}
    whole = client.completions.create(**options)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **options))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text == llm.generate("Once upon a time", max_tokens=10, seed=3, temperature=1.0)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_n_choices_equal_single_requests_with_seed_plus_i(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {"model": "x", "messages": HI, "max_tokens": 8, "temperature": 1.0}
    many = client.chat.completions.create(n=3, seed=11, **options)
    texts = [c.message.content for c in sorted(many.choices, key=lambda c: c.index)]
    singles = [client.chat.completions.create(seed=11 + i, **options).choices[0].message.content for i in range(3)]
    assert texts == singles
    assert len(set(texts)) > 1
    assert many.usage is not None and many.usage.completion_tokens > 8


def test_seed_reproduces_and_stream_carries_n_choices(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {"model": "x", "messages": HI, "max_tokens": 6, "temperature": 1.0, "seed": 5, "n": 2}
    first = [c.message.content for c in client.chat.completions.create(**options).choices]
    streamed = ["", ""]
    for chunk in client.chat.completions.create(stream=True, **options):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == first


def test_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    full = client.completions.create(model="x", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0]
    stop = full.text[len(full.text) // 2 :][:3]  # from the middle of the greedy text, so it is cut there (or earlier)
    assert stop
    cut = client.completions.create(model="x", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop]).choices[0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"


def test_logprobs(client: openai.OpenAI, http: httpx.Client) -> None:
    reply = client.chat.completions.create(model="x", messages=HI, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and len(content) <= 4
    for item in content:
        assert len(item.top_logprobs) == 3 and item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
        assert item.logprob == item.top_logprobs[0].logprob  # greedy takes the most likely token
    text = http.post("/v1/completions", json={"prompt": "The sky is", "max_tokens": 3, "temperature": 0, "logprobs": 2}).json()["choices"][
        0
    ]
    assert len(text["logprobs"]["tokens"]) == 3 and all(len(top) == 2 for top in text["logprobs"]["top_logprobs"])
    assert "".join(text["logprobs"]["tokens"]) == text["text"]


def test_prefix_reuse_gives_the_fresh_reply(client: openai.OpenAI, llm) -> None:  # type: ignore[no-untyped-def]
    first = client.chat.completions.create(model="x", messages=HI, temperature=0, max_tokens=10)
    follow = [*HI, {"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "And of Italy?"}]
    second = client.chat.completions.create(model="x", messages=follow, temperature=0, max_tokens=10)  # type: ignore[arg-type]
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= len(llm.encode_chat(HI))
    assert second.choices[0].message.content == llm.generate(llm.encode_chat(follow), temperature=0, max_tokens=10)


# ---------------------------------------------------------------- refusals


def test_context_overflow_names_both_numbers_unless_truncate(client: openai.OpenAI, http: httpx.Client, llm) -> None:  # type: ignore[no-untyped-def]
    import openai

    prompt = "word " * 300
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="x", prompt=prompt, max_tokens=10)
    message = caught.value.body["message"]  # type: ignore[index]
    assert f"{len(llm.tokenizer.encode(prompt))} tokens" in message and "max_tokens is 10" in message and "256 tokens" in message
    body = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 3, "truncate": True, "temperature": 0}).json()
    assert body["usage"]["prompt_tokens"] == 253 and body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b"[1, 2]", None),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ("/v1/chat/completions", {"messages": HI, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"messages": HI, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": HI, "max_tokens": True}, "max_tokens"),
        ("/v1/chat/completions", {"messages": HI, "n": PARALLEL + 1}, "n"),
        ("/v1/chat/completions", {"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/chat/completions", {"messages": HI, "top_p": 0}, "top_p"),
        ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "yaml"}}, None),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"prompt": [1, 10**9]}, "prompt"),
        ("/detokenize", {"tokens": ["a"]}, "tokens"),
        ("/tokenize", {"content": 3}, "content"),
    ],
)
def test_client_errors_are_openai_shaped_400s(http: httpx.Client, path: str, body: Any, param: str | None) -> None:
    response = http.post(path, content=body if isinstance(body, bytes) else json.dumps(body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param


def test_oversized_body_unknown_route_and_method(http: httpx.Client) -> None:
    big = http.post("/v1/chat/completions", content=json.dumps({"messages": [{"role": "user", "content": "x" * (70 << 10)}]}))
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert http.get("/v1/nothing").status_code == 404 and "error" in http.get("/v1/nothing").json()
    assert http.get("/v1/chat/completions").status_code == 405


def test_full_queue_gets_503_and_disconnect_cancels(server: str, http: httpx.Client) -> None:
    long = {"messages": HI, "max_tokens": 200, "ignore_eos": True, "stream": True}
    answers = []
    # The tiny model can finish every row before the second request queues, or between the moment
    # it is seen queued and the third request: then the scene is set up again. A server that never
    # refuses still fails: every attempt's third request is answered.
    for _attempt in range(5):
        with httpx.Client(base_url=server, timeout=60) as a, httpx.Client(base_url=server, timeout=60) as b:
            running = a.stream("POST", "/v1/chat/completions", json={**long, "n": PARALLEL})  # every row busy
            with running as first:
                assert next(first.iter_lines()).startswith("data: ")
                with b.stream("POST", "/v1/chat/completions", json=long):  # the one place in line
                    deadline = time.monotonic() + 3  # it queues within milliseconds, or the rows are done
                    while (queued := http.get("/health").json()["waiting"]) < 1 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    if queued:
                        answers.append(http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2}))
                # both clients leave mid-stream
        health = wait_idle(http)
        assert health["free_rows"] == PARALLEL
        refused = [r for r in answers if r.status_code == 503]
        if refused:
            assert refused[0].headers["retry-after"] == "1" and refused[0].json()["error"]["code"] == "server_busy"
            assert all(r.status_code in (200, 503) for r in answers)
            return
    pytest.fail(f"no request was refused with 503 while the queue was full: {[r.status_code for r in answers]}")


# ---------------------------------------------------------------- small endpoints


def test_tokenize_detokenize_apply_template(http: httpx.Client, llm) -> None:  # type: ignore[no-untyped-def]
    ids = http.post("/tokenize", json={"content": "Hello, world"}).json()["tokens"]
    assert ids == llm.tokenizer.encode("Hello, world")
    assert http.post("/detokenize", json={"tokens": ids}).json()["content"] == llm.tokenizer.decode(ids)
    assert http.post("/apply-template", json={"messages": HI}).json()["prompt"] == llm.chat_prompt(HI)
    assert http.post("/tokenize", json={"messages": HI}).json()["tokens"] == llm.encode_chat(HI)


def test_api_key_and_cors_without_a_model() -> None:
    from starlette.testclient import TestClient

    guarded = TestClient(create_app(ServeConfig(api_key="sekrit")))  # no lifespan: the model never loads
    assert guarded.get("/v1/models").status_code == 401
    assert guarded.get("/v1/models").json()["error"]["code"] == "invalid_api_key"
    assert guarded.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/v1/models", headers={"Authorization": "Bearer sekrit"}).status_code == 200
    assert guarded.get("/health").status_code == 503  # /health needs no key; it says "loading"
    loading = guarded.post("/v1/completions", headers={"Authorization": "Bearer sekrit"}, json={"prompt": "hi"})
    assert loading.status_code == 503 and loading.headers["retry-after"] == "1"
    plain = TestClient(create_app(ServeConfig()))
    assert "access-control-allow-origin" not in plain.get("/v1/models", headers={"Origin": "http://example.test"}).headers
    cors = TestClient(create_app(ServeConfig(cors_origin="http://example.test")))
    assert cors.get("/v1/models", headers={"Origin": "http://example.test"}).headers["access-control-allow-origin"] == "http://example.test"


# ---------------------------------------------------------------- the command


def test_sigterm_lets_an_open_stream_finish(tmp_path: Path, tiny_model_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    options = ["-m", str(tiny_model_path), "--port", str(port), "--ctx", "128", "--parallel", "1"]
    command = [sys.executable, "-m", "llama_cli", "serve", *options]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "LLAMA_THREADS": "1"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            wait_healthy(http)
            body = {"prompt": "Once upon a time", "max_tokens": 16, "ignore_eos": True, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("data: ")
                process.send_signal(signal.SIGTERM)
                rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert len([line for line in rest if '"text"' in line]) >= 10  # the stream ran to its end
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, err = process.communicate()
    assert "Traceback" not in err


def test_generate_with_server_prints_what_a_local_run_prints(server: str, llm) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from llama_cli.cli import app

    runner = CliRunner()
    plain = runner.invoke(app, ["generate", "--server", server, "-t", "0", "-n", "8", "The capital of France is"])
    assert plain.exit_code == 0 and plain.stdout == llm.generate("The capital of France is", temperature=0, max_tokens=8)
    lines = runner.invoke(
        app, ["generate", "--json", "-n", "4", "--seed", "9", "Once upon a time"], env={"LLAMA_SERVER": server}
    ).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    local = llm.stream("Once upon a time", max_tokens=4, seed=9)
    assert [(e["id"], e["text"]) for e in events[:-1]] == [(t.id, t.text) for t in local]
    assert events[-1]["text"] == local.text and events[-1]["seed"] == 9 and events[-1]["generated_tokens"] == 4
    refused = runner.invoke(app, ["generate", "--server", server, "-t", "9", "hi"])
    assert refused.exit_code == 2 and "temperature" in refused.stderr
    assert runner.invoke(app, ["generate", "--server", server, "--lookup", "2", "hi"]).exit_code == 2


def test_chat_with_server_replies_as_a_local_chat(server: str, llm) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from llama_cli.chat import ChatSession
    from llama_cli.cli import app
    from llama_cli.settings import make_settings

    turns = ["What is the capital of France?", "And of Spain?"]
    session = ChatSession(llm, make_settings(temperature=0, max_tokens=12), system="Answer briefly.")
    local = []
    for text in turns:
        turn = session.turn(text)
        for _ in turn:
            pass
        local.append(turn.text)
    runner = CliRunner()
    args = ["chat", "--server", server, "-t", "0", "-n", "12", "-s", "Answer briefly.", "--json"]
    replies = [json.loads(line) for line in runner.invoke(app, args, input="\n".join(turns) + "\n").stdout.splitlines()]
    assert [r["text"] for r in replies] == local
    assert replies[1]["cached_tokens"] >= replies[0]["prompt_tokens"]  # the server's cache kept the first turn
    refused = runner.invoke(app, ["chat", "--server", server, "--template", "chatml"], input="hi\n")
    assert refused.exit_code == 2 and "--template cannot be combined with --server" in refused.stderr


def test_server_urls_and_unreachable_servers_are_one_line() -> None:
    from typer.testing import CliRunner

    from llama_cli.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["generate", "--server", "localhost:8080", "hi"])
    assert bad.exit_code == 2 and "expected a URL such as http://127.0.0.1:8080" in bad.stderr
    for args in (["generate", "hi"], ["chat"]):
        gone = runner.invoke(app, [*args, "--server", "http://127.0.0.1:1"], input="hi\n")
        assert gone.exit_code == 1 and "cannot reach the server at http://127.0.0.1:1" in gone.stderr, gone.stderr


@pytest.mark.parametrize("ctx", [256, 110])  # the server's own (it refuses, then the client fits), or a smaller --ctx
def test_chat_with_server_drops_old_turns_as_a_local_chat(server: str, llm, ctx: int) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from llama_cli.chat import ChatSession
    from llama_cli.cli import app
    from llama_cli.settings import make_settings

    turns = [f"Tell me about the {word} " + "very " * 60 + "old city." for word in ("first", "second", "third")]
    session = ChatSession(llm, make_settings(temperature=0, max_tokens=16), context=ctx)
    local = []
    for text in turns:
        turn = session.turn(text)
        for _ in turn:
            pass
        local.append((turn.text, turn.dropped))
    args = ["chat", "--server", server, "-t", "0", "-n", "16", "--json", *(["--ctx", str(ctx)] if ctx < 256 else [])]
    result = CliRunner().invoke(app, args, input="\n".join(turns) + "\n")
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == [text for text, _ in local]
    assert any(dropped for _, dropped in local)
    assert result.stderr.count("[dropped the oldest") == sum(1 for _, dropped in local if dropped)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "0"], "--port"),
        (["--parallel", "0"], "--parallel"),
        (["--queue", "-1"], "--queue"),
        (["--template", "nosuch"], "template"),
    ],
)
def test_serve_usage_errors_before_anything_loads(args: list[str], needle: str) -> None:
    from typer.testing import CliRunner

    from llama_cli.cli import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2 and needle in result.stderr and result.stderr.count("\n") == 1


def test_serve_on_a_port_in_use_is_one_line() -> None:
    from typer.testing import CliRunner

    from llama_cli.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(app, ["serve", "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1" in result.stderr and "Traceback" not in result.stderr
