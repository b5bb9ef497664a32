"""Generation over gRPC against the real daemon on the tiny model."""
from __future__ import annotations

import grpc
import pytest

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime.client import HearthClient
from tests.integration.conftest import Daemon


def test_stream_arrives_in_chunks_with_usage_at_the_end(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        # The tiny model is fast enough that the engine coalesces tokens taken
        # together; a long generation still arrives in several chunks.
        chunks = list(c.generate("hello world", max_tokens=600, temperature=0.0,
                                 ignore_eos=True))
    assert len(chunks) >= 2
    assert chunks[0].request_id
    for chunk in chunks[:-1]:
        assert chunk.finish_reason == ipb.FINISH_REASON_UNSPECIFIED
        assert not chunk.HasField("usage")
    last = chunks[-1]
    assert last.finish_reason == ipb.FINISH_REASON_LENGTH
    assert last.model == "tiny"
    assert last.usage.completion_tokens == 600
    assert sum(len(c.token_ids) for c in chunks) == 600
    assert last.usage.prompt_tokens == 3
    assert 0 < last.usage.ttft_seconds <= last.usage.total_seconds


def test_unix_socket_serves_the_same(tiny_daemon: Daemon) -> None:
    sock = next(a for a in tiny_daemon.addresses if a.startswith("unix:"))
    with HearthClient(sock, timeout=30) as u, tiny_daemon.client() as t:
        a = u.complete("the patient", max_tokens=12, temperature=0.0, ignore_eos=True)
        b = t.complete("the patient", max_tokens=12, temperature=0.0, ignore_eos=True)
    assert a[1] == b[1] and a[0] == b[0]


def test_model_name_may_be_omitted_with_one_model(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        named = c.complete("bank", model="tiny", max_tokens=5, temperature=0.0)
        unnamed = c.complete("bank", max_tokens=5, temperature=0.0)
    assert named[1] == unnamed[1]


def test_stop_sequence_is_reported(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        text, _, _ = c.complete("hello world", max_tokens=40, temperature=0.0, ignore_eos=True)
        stop = text[8:12]
        cut, _, last = c.complete("hello world", max_tokens=40, temperature=0.0,
                                  ignore_eos=True, stop=[stop])
    assert last.finish_reason == ipb.FINISH_REASON_STOP
    assert last.stop_sequence == stop
    assert cut == text[:text.index(stop)]


def test_prompt_tokens_instead_of_text(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        tokens = c.tokenize("hello world")
        by_text = c.complete("hello world", max_tokens=6, temperature=0.0)
        by_tokens = c.complete(tokens, max_tokens=6, temperature=0.0)
    assert by_text[1] == by_tokens[1]


def test_chat_uses_the_models_template(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        _text, _tokens, _last = c.complete("x", max_tokens=1)  # warm
        chunks = list(c.chat([("system", "be brief"), ("user", "hello")], max_tokens=8,
                             temperature=0.0))
        # The same prompt rendered by hand gives the same tokens.
        manual = ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                  "<|im_start|>assistant\n")
        expected = c.complete(manual, max_tokens=8, temperature=0.0)
    assert [t for ch in chunks for t in ch.token_ids] == expected[1]
    assert chunks[-1].usage.prompt_tokens == expected[2].usage.prompt_tokens


def test_embed_tokenize_detokenize(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        reply = c.embed(["hello world", "the patient"], normalize=True)
        assert len(reply.embeddings) == 2 and reply.model == "tiny"
        for e in reply.embeddings:
            assert len(e.values) == 64
            assert abs(sum(v * v for v in e.values) - 1) < 1e-3
        tokens = c.tokenize("the doctor", add_special=False)
        assert c.detokenize(tokens).strip() == "the doctor"


def test_models_list_and_get(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        listed = c.list_models()
        status = c.get_model("tiny")
    assert [m.name for m in listed.models] == ["tiny"]
    assert status.state == 2  # READY
    assert status.slots_total == 16
    assert status.n_ctx_per_request == 1024
    assert status.weights_bytes > 0 and status.kv_cache_bytes > 0
    assert status.tokens_generated > 0


def test_request_id_is_propagated(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        call = c.inference.Generate(ipb.GenerateRequest(prompt="hi", max_tokens=2),
                                    metadata=(("x-request-id", "req-42"),))
        chunks = list(call)
        assert dict(call.initial_metadata())["x-request-id"] == "req-42"
    assert chunks[0].request_id == "req-42"


def test_unknown_model_is_not_found(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c, pytest.raises(grpc.RpcError) as err:
        c.complete("hi", model="nope", max_tokens=2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()
