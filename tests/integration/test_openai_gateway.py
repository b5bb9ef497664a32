"""The OpenAI-compatible HTTP gateway against the real daemon on the tiny
model, called with OpenAI's own Python client (and raw HTTP where the client
would not send what we want to test)."""
from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from runtime.client import HearthClient
from tests.integration.conftest import Daemon, start_daemon
from tests.integration.test_sealed_serving import hearth

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def ready_info(tmp: Path) -> dict[str, Any]:
    """The ready file of the one daemon started in `tmp`."""
    (ready,) = tmp.glob("ready-*.json")
    return json.loads(ready.read_text())


def start_gateway(tmp: Path, *args: str) -> tuple[Daemon, str]:
    d = start_daemon([*args, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"], tmp)
    return d, ready_info(tmp)["http"]


def client(addr: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{addr}/v1", api_key=key, max_retries=0, timeout=60)


def raw(addr: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, Any]:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.headers, json.loads(data) if data else None
    finally:
        conn.close()


def post_json(addr: str, path: str, body: Any, **headers: str) -> tuple[int, Any, Any]:
    return raw(addr, "POST", path, json.dumps(body).encode(),
               {"Content-Type": "application/json", **headers})


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def gateway(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Daemon, str]]:
    d, addr = start_gateway(tmp_path_factory.mktemp("gateway"), "--model", f"tiny={tiny_model}",
                            "--parallel", "4", "--ctx", "8192", "--threads", "2")
    yield d, addr
    assert d.stop() == 0, d.log()


@pytest.fixture
def oai(gateway: tuple[Daemon, str]) -> openai.OpenAI:
    return client(gateway[1])


# ---- what works ---------------------------------------------------------------

def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == ["tiny"]
    model = oai.models.retrieve("tiny")
    assert (model.id, model.object, model.owned_by) == ("tiny", "model", "hearth")
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.retrieve("nope")
    assert err.value.code == "model_not_found"


def test_completion_is_the_grpc_greedy_result(gateway: tuple[Daemon, str],
                                              oai: openai.OpenAI) -> None:
    with gateway[0].client() as c:
        text, tokens, last = c.complete("hello world", max_tokens=12, temperature=0.0,
                                        ignore_eos=True)
    reply = oai.completions.create(model="tiny", prompt="hello world", max_tokens=12,
                                   temperature=0, extra_body={"ignore_eos": True})
    assert reply.object == "text_completion" and reply.model == "tiny"
    assert reply.choices[0].text == text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 12)
    # token ids as the prompt give the same
    by_tokens = oai.completions.create(model="tiny", prompt=c_tokens("hello world", gateway),
                                       max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert by_tokens.choices[0].text == text
    assert len(tokens) == 12 and last.usage.completion_tokens == 12


def c_tokens(text: str, gateway: tuple[Daemon, str]) -> list[int]:
    with gateway[0].client() as c:
        return c.tokenize(text)


def test_streamed_completion_equals_the_whole_one(oai: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(model="tiny", prompt="the patient", max_tokens=400,
                                temperature=0, extra_body={"ignore_eos": True})
    whole = oai.completions.create(**args)
    chunks = list(oai.completions.create(**args, stream=True,
                                         stream_options={"include_usage": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].text]) >= 2
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 400


def test_chat_stream_arrives_in_chunks_equal_to_the_greedy_reply(oai: openai.OpenAI) -> None:
    # Long enough that the stream cannot arrive coalesced into one or two
    # chunks, whatever the timing (the engine merges what a slow reader has
    # not taken yet).
    args: dict[str, Any] = dict(model="tiny", messages=CHAT, max_completion_tokens=400,
                                temperature=0, extra_body={"ignore_eos": True})
    whole = oai.chat.completions.create(**args)
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    message = whole.choices[0].message
    assert message.role == "assistant" and message.content
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 400
    stream = oai.chat.completions.create(**args, stream=True)
    chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(contents) >= 2
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(contents) == message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert {c.model for c in chunks} == {"tiny"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


def test_chat_uses_the_models_template_like_grpc(gateway: tuple[Daemon, str],
                                                 oai: openai.OpenAI) -> None:
    with gateway[0].client() as c:
        chunks = list(c.chat([("system", "be brief"), ("user", "hello")], max_tokens=10,
                             temperature=0.0, ignore_eos=True))
    reply = oai.chat.completions.create(model="tiny", max_tokens=10, temperature=0,
                                        extra_body={"ignore_eos": True}, messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert reply.choices[0].message.content == "".join(ch.text for ch in chunks)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == chunks[-1].usage.prompt_tokens


def test_concurrent_streams_match_their_single_runs(gateway: tuple[Daemon, str]) -> None:
    prompts = ["alpha", "bravo charlie", "delta", "echo foxtrot golf"]
    single = client(gateway[1])
    expected = [single.completions.create(model="tiny", prompt=p, max_tokens=30, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].text
                for p in prompts]

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"http://{gateway[1]}/v1", api_key="none",
                                      max_retries=0, timeout=60) as aoai:
            async def one(prompt: str) -> str:
                stream = await aoai.completions.create(
                    model="tiny", prompt=prompt, max_tokens=30, temperature=0, stream=True,
                    extra_body={"ignore_eos": True})
                return "".join([c.choices[0].text async for c in stream if c.choices])
            return list(await asyncio.gather(*(one(p) for p in prompts)))

    assert asyncio.run(run()) == expected


def test_embeddings_match_grpc(gateway: tuple[Daemon, str], oai: openai.OpenAI) -> None:
    with gateway[0].client() as c:
        grpc_vectors = [list(e.values) for e in c.embed(["hello", "world"]).embeddings]
    default = oai.embeddings.create(model="tiny", input=["hello", "world"])   # base64 on the wire
    floats = oai.embeddings.create(model="tiny", input=["hello", "world"],
                                   encoding_format="float")
    single = oai.embeddings.create(model="tiny", input="hello", encoding_format="float")
    assert [d.index for d in default.data] == [0, 1] and default.model == "tiny"
    for got in (default, floats):
        for vector, expected in zip((d.embedding for d in got.data), grpc_vectors, strict=True):
            assert len(vector) == len(expected)
            assert max(abs(a - b) for a, b in zip(vector, expected, strict=True)) < 1e-6
    assert single.data[0].embedding == floats.data[0].embedding
    assert abs(sum(v * v for v in single.data[0].embedding) - 1.0) < 1e-4   # unit length
    assert default.usage.prompt_tokens > 0


def test_model_may_be_omitted_with_one_model(gateway: tuple[Daemon, str]) -> None:
    status, _, body = post_json(gateway[1], "/v1/chat/completions",
                                {"messages": CHAT, "max_tokens": 3})
    assert status == 200 and body["model"] == "tiny"


def test_request_id_is_honoured_and_returned(gateway: tuple[Daemon, str]) -> None:
    status, headers, body = post_json(gateway[1], "/v1/completions",
                                      {"prompt": "hi", "max_tokens": 2},
                                      **{"x-request-id": "ward-7.case:42"})
    assert status == 200
    assert headers["x-request-id"] == "ward-7.case:42" and body["id"] == "cmpl-ward-7.case:42"
    # one request-log line, as for gRPC, with the outcome of a request that ran to its end
    assert "generate tiny ok length [request_id=ward-7.case:42 client=http:127.0.0.1" \
        in gateway[0].log()
    host, _, port = gateway[1].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"messages": CHAT, "max_tokens": 3, "stream": True}).encode(),
        {"Content-Type": "application/json", "x-request-id": "ward-7.stream"})
    resp = conn.getresponse()
    assert resp.headers["x-request-id"] == "ward-7.stream"
    assert resp.read().endswith(b"data: [DONE]\n\n")
    conn.close()
    assert "chat tiny ok length [request_id=ward-7.stream " in gateway[0].log()
    _, headers, body = post_json(gateway[1], "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                                 **{"x-request-id": "bad id/../" + "x" * 80})
    assert headers["x-request-id"] != "" and "/" not in headers["x-request-id"]
    assert body["id"] == f"cmpl-{headers['x-request-id']}"
    # errors carry one too
    _, headers, _ = post_json(gateway[1], "/v1/completions", {"prompt": "hi", "n": 3},
                              **{"x-request-id": "err-1"})
    assert headers["x-request-id"] == "err-1"


def test_health(gateway: tuple[Daemon, str]) -> None:
    for path in ("/health", "/v1/health"):
        status, _, body = raw(gateway[1], "GET", path)
        assert (status, body) == (200, {"status": "ok"})


# ---- what is refused ------------------------------------------------------------

def test_unknown_model_is_not_found(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="no-such-model", messages=CHAT)
    assert (err.value.param, err.value.code) == ("model", "model_not_found")


@pytest.mark.parametrize(("fields", "param"), [
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"stop": ["a"] * 17}, "stop"),
    ({"seed": -3}, "seed"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
])
def test_bad_chat_requests_are_400_naming_the_param(oai: openai.OpenAI, fields: dict,
                                                    param: str) -> None:
    args: dict[str, Any] = {"model": "tiny", "messages": CHAT, "max_tokens": 4, **fields}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            reply = oai.chat.completions.create(**args, stream=stream)
            if stream:
                list(reply)  # type: ignore[arg-type]
        assert err.value.param == param, err.value.message
        assert err.value.type == "invalid_request_error"


def test_prompt_longer_than_the_context_states_the_token_counts(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="tiny", prompt="word " * 3000, max_tokens=4)
    assert err.value.param == "prompt"
    assert "do not fit the model's context of 2048 tokens" in err.value.message


def test_unknown_arguments_are_refused(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=CHAT, extra_body={"temprature": 0})
    assert (err.value.param, err.value.code) == ("temprature", "unknown_parameter")


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    (b'{"prompt": "hi", "max_tokens": ', {"Content-Type": "application/json"}, 400, None),
    (b'["prompt"]', {"Content-Type": "application/json"}, 400, None),
    (b'{"prompt": "\xff\xfe"}', {"Content-Type": "application/json"}, 400, None),
    (b'{"prompt": "hi", "temperature": NaN}', {"Content-Type": "application/json"}, 400, None),
    (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, 400, None),
    (b'{"prompt": "hi"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    (b'{"prompt": "hi"}', {}, 415, "unsupported_media_type"),
    (b'{"prompt": "' + b"x" * (5 << 20) + b'"}', {"Content-Type": "application/json"}, 413,
     "request_too_large"),
])
def test_malformed_bodies_get_openai_shaped_errors(gateway: tuple[Daemon, str], body: bytes,
                                                   headers: dict, status: int,
                                                   code: str | None) -> None:
    got, _, reply = raw(gateway[1], "POST", "/v1/completions", body, headers)
    assert got == status
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["type"] == "invalid_request_error"
    assert reply["error"]["code"] == code
    # and the server carries on
    assert post_json(gateway[1], "/v1/completions", {"prompt": "hi", "max_tokens": 1})[0] == 200


def test_unknown_routes_and_wrong_methods(gateway: tuple[Daemon, str]) -> None:
    status, _, body = raw(gateway[1], "GET", "/v1/engines")
    assert status == 404 and body["error"]["code"] == "unknown_url"
    status, headers, body = raw(gateway[1], "GET", "/v1/chat/completions")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    assert "POST" in headers["Allow"]
    status, _, body = raw(gateway[1], "DELETE", "/v1/models/tiny")
    assert status == 405


# ---- cancellation ---------------------------------------------------------------

@pytest.fixture
def one_slot(tmp_path: Path, tiny_model: Path) -> Iterator[tuple[Daemon, str]]:
    d, addr = start_gateway(tmp_path, "--model", f"tiny={tiny_model}", "--parallel", "1",
                            "--ctx", "4096", "--max-queue", "1", "--threads", "1")
    yield d, addr
    assert d.stop() == 0, d.log()


LONG = {"model": "tiny", "prompt": "hello", "max_tokens": 4000, "temperature": 0,
        "ignore_eos": True}


def _open_request(addr: str, body: dict) -> http.client.HTTPConnection:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(body).encode(),
                 {"Content-Type": "application/json"})
    return conn


def _assert_slot_freed_and_idle(c: HearthClient, addr: str) -> None:
    wait_for(lambda: c.get_model().slots_busy == 0)
    status = c.get_model()
    assert status.tokens_generated < 4000
    generated = status.tokens_generated
    time.sleep(0.3)
    assert c.get_model().tokens_generated == generated       # no compute for it afterwards
    # the one slot serves the next request at once
    assert post_json(addr, "/v1/completions", {"prompt": "again", "max_tokens": 3})[0] == 200


def test_client_disconnect_mid_stream_frees_the_slot(one_slot: tuple[Daemon, str]) -> None:
    d, addr = one_slot
    with d.client() as c:
        conn = _open_request(addr, {**LONG, "stream": True})
        resp = conn.getresponse()
        assert resp.status == 200
        events = 0
        while events < 3:
            if resp.readline().startswith(b"data: "):
                events += 1
        assert c.get_model().slots_busy == 1
        resp.close()
        conn.close()
        _assert_slot_freed_and_idle(c, addr)


def test_client_disconnect_before_a_whole_reply_frees_the_slot(one_slot: tuple[Daemon, str]
                                                               ) -> None:
    d, addr = one_slot
    with d.client() as c:
        conn = _open_request(addr, LONG)
        wait_for(lambda: c.get_model().slots_busy == 1)
        conn.close()
        _assert_slot_freed_and_idle(c, addr)
    assert "Traceback" not in d.log()


def test_sigterm_lets_a_running_stream_finish(one_slot: tuple[Daemon, str]) -> None:
    d, addr = one_slot
    conn = _open_request(addr, {**LONG, "max_tokens": 1500, "stream": True,
                                "stream_options": {"include_usage": True}})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")
    d.proc.send_signal(signal.SIGTERM)
    events = [line[len(b"data: "):].strip() for line in resp.read().splitlines()
              if line.startswith(b"data: ")]
    conn.close()
    assert events[-1] == b"[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 1500
    assert d.proc.wait(60) == 0


# ---- structured output and logprobs ------------------------------------------------

def test_json_schema_response_format_gives_matching_json(oai: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    reply = oai.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=60, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "check", "schema": schema, "strict": True}})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or "")["ok"], bool)


def test_json_object_and_grammar(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model="tiny", messages=CHAT, max_tokens=200,
                                        temperature=0, response_format={"type": "json_object"})
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    else:   # a random model may write a long object; what there is must start one
        assert (reply.choices[0].message.content or "").lstrip().startswith("{")
    answer = oai.completions.create(model="tiny", prompt="yes or no?", max_tokens=5,
                                    temperature=0.7, seed=3,
                                    extra_body={"grammar": 'root ::= "yes" | "no"'})
    assert answer.choices[0].text in ("yes", "no")


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "number", "minimum": 3}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": 5}}}}, "response_format.json_schema.schema"),
    ({"extra_body": {"grammar": "root ::= missing"}}, "grammar"),
    ({"extra_body": {"grammar": 'root ::= "a"',
                     "response_format": {"type": "json_object"}}}, "grammar"),
])
def test_bad_structured_output_requests_name_the_param(oai: openai.OpenAI, fields: dict,
                                                       param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, **fields)
    assert err.value.param == param, err.value.message


def test_chat_logprobs_come_back_per_token(oai: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(model="tiny", messages=CHAT, max_tokens=6, temperature=0,
                                logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = oai.chat.completions.create(**args).choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 6
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    # greedy: the chosen token is the most likely one
    assert all(t.token == t.top_logprobs[0].token for t in content)
    streamed = [t for c in oai.chat.completions.create(**args, stream=True)
                if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content or ()]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    plain = oai.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_are_parallel_lists(oai: openai.OpenAI) -> None:
    reply = oai.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0,
                                   logprobs=2, extra_body={"ignore_eos": True})
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and len(lp.tokens) == 5
    assert lp.token_logprobs is not None and len(lp.token_logprobs) == 5
    assert lp.top_logprobs is not None and all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]


# ---- listener and authentication --------------------------------------------------

def test_the_http_listener_is_off_by_default(tmp_path: Path, tiny_model: Path) -> None:
    d = start_daemon(["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                      "--ctx", "512", "--parallel", "1"], tmp_path)
    try:
        assert ready_info(tmp_path)["http"] == ""
        assert "OpenAI-compatible HTTP" not in d.log()
    finally:
        assert d.stop() == 0


def test_a_non_loopback_http_listener_needs_auth(tiny_model: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", "--model",
                           f"tiny={tiny_model}", "--listen", "127.0.0.1:0", "--http-listen",
                           "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "server.http_listen: refusing to listen on 0.0.0.0:0 without authentication" \
        in proc.stderr


def test_a_port_in_use_is_a_listen_error(tiny_model: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", "--model",
                               f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                               "--http-listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("http-auth")
    state, key = base / "state", base / "master.key"
    common = ["--state-dir", str(state), "--key-file", str(key)]
    hearth("keys", "init", *common)
    ward = hearth("tokens", "create", "ward", "--models", "tiny", *common).stdout.strip()
    ops = hearth("tokens", "create", "ops", "--models", "*", *common).stdout.strip()
    config = base / "hearth.toml"
    config.write_text("[auth]\nrequire = true\n")
    run = base / "run"
    run.mkdir()
    # two models from the same file; the ward token may use only one of them
    d, addr = start_gateway(run, "--config", str(config), *common, "--model",
                            f"tiny={tiny_model}", "--model", f"other={tiny_model}",
                            "--ctx", "1024", "--parallel", "2")
    yield {"daemon": d, "http": addr, "ward": ward, "ops": ops}
    assert d.stop() == 0, d.log()


def test_no_or_wrong_key_is_an_authentication_error(secured: dict) -> None:
    for key in ("none", "hth_000000000000_" + "A" * 43, secured["ward"] + "x"):
        with pytest.raises(openai.AuthenticationError):
            client(secured["http"], key).models.list()
        with pytest.raises(openai.AuthenticationError):
            client(secured["http"], key).chat.completions.create(model="tiny", messages=CHAT,
                                                                 max_tokens=2)
    status, headers, body = raw(secured["http"], "GET", "/v1/models")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert body["error"]["type"] == "authentication_error"
    assert "credentials required" in body["error"]["message"]
    # an unauthenticated caller learns nothing about routes either
    assert raw(secured["http"], "GET", "/v1/nothing")[0] == 401
    # health stays open for load balancers
    assert raw(secured["http"], "GET", "/health")[0] == 200


def test_a_token_works_and_its_acl_holds(secured: dict) -> None:
    ward = client(secured["http"], secured["ward"])
    assert [m.id for m in ward.models.list()] == ["tiny"]
    reply = ward.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2,
                                         temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    with pytest.raises(openai.PermissionDeniedError) as err:
        ward.chat.completions.create(model="other", messages=CHAT, max_tokens=2)
    assert "token:ward may not use model 'other'" in err.value.message
    with pytest.raises(openai.PermissionDeniedError):
        ward.models.retrieve("other")
    with pytest.raises(openai.PermissionDeniedError):
        ward.embeddings.create(model="other", input="x")
    ops = client(secured["http"], secured["ops"])
    assert sorted(m.id for m in ops.models.list()) == ["other", "tiny"]
    assert "client=token:ward" in secured["daemon"].log()


def test_chat_on_a_model_without_a_template_is_refused(tmp_path: Path) -> None:
    """/v1/chat/completions on a base model (no template in its GGUF) is a
    400 failed_precondition naming the way out; /v1/completions still
    works.  Fails on ea4a01e, which chatted with a guessed ChatML template."""
    from runtime.models.tiny import write_tiny_model

    base = write_tiny_model(tmp_path / "base.gguf", chat_template=None)
    d, addr = start_gateway(tmp_path, "--model", f"base={base}", "--parallel", "1",
                            "--ctx", "512")
    try:
        status, _, body = post_json(addr, "/v1/chat/completions",
                                    {"model": "base", "messages": CHAT, "max_tokens": 3})
        done, _, _ = post_json(addr, "/v1/completions",
                               {"model": "base", "prompt": "hi", "max_tokens": 2})
    finally:
        assert d.stop() == 0, d.log()
    assert status == 400 and body["error"]["code"] == "failed_precondition"
    assert "model 'base' has no chat template" in body["error"]["message"]
    assert "[models.base] chat_template" in body["error"]["message"]
    assert done == 200
