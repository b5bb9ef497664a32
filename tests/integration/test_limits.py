"""Cancellation, deadlines, queue limits and message sizes against the real
daemon (SECURITY-CASES 12, 13, 14)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from tests.integration.conftest import Daemon

LONG = {"max_tokens": 900, "temperature": 0.0, "ignore_eos": True}


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def one_slot(daemon_factory, tiny_model: Path) -> Daemon:  # type: ignore[no-untyped-def]
    return daemon_factory("--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                          "--parallel", "1", "--ctx", "1024", "--max-queue", "1",
                          "--threads", "1")


def test_client_cancel_frees_the_slot_and_stops_compute(one_slot: Daemon) -> None:
    with one_slot.client() as c:
        call = c.inference.Generate(ipb.GenerateRequest(prompt="hello", **LONG))
        next(call)
        assert c.get_model().slots_busy == 1
        call.cancel()
        wait_for(lambda: c.get_model().slots_busy == 0)
        generated = c.get_model().tokens_generated
        time.sleep(0.3)
        assert c.get_model().tokens_generated == generated
        # The slot is usable at once.
        assert c.complete("again", max_tokens=3)[2].usage.completion_tokens == 3


def test_deadline_reaches_the_engine(one_slot: Daemon) -> None:
    with one_slot.client() as c:
        # Slow the single slot down so the deadline certainly passes mid-run.
        with pytest.raises(grpc.RpcError) as err:
            for _ in c.inference.Generate(ipb.GenerateRequest(prompt="hi", **LONG), timeout=0.05):
                time.sleep(0.01)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: c.get_model().slots_busy == 0)


def test_full_queue_is_resource_exhausted_with_retry_hint(one_slot: Daemon) -> None:
    with one_slot.client() as c:
        results: dict[str, object] = {}

        def long_stream(key: str) -> None:
            results[key] = c.complete("hello", **LONG)

        threads = [threading.Thread(target=long_stream, args=(k,)) for k in ("a", "b")]
        for t in threads:
            t.start()
        wait_for(lambda: c.get_model().queue_depth == 1 and c.get_model().slots_busy == 1)
        with pytest.raises(grpc.RpcError) as err:
            c.complete("one too many", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in err.value.details()
        trailers = dict(err.value.trailing_metadata())
        assert int(trailers["retry-after-ms"]) > 0
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.retry_delay.ToMilliseconds() > 0
        for t in threads:
            t.join(60)
        # The streams that were admitted finished untouched.
        for key in ("a", "b"):
            assert results[key][2].usage.completion_tokens == 900  # type: ignore[index]


def test_oversized_message_is_refused_and_the_server_carries_on(daemon_factory,  # type: ignore[no-untyped-def]
                                                                tiny_model: Path) -> None:
    d = daemon_factory("--config", str(_config(tiny_model, max_receive=65536)))
    with d.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.complete("x" * 100_000, max_tokens=2)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.complete("still fine", max_tokens=2)[2].usage.completion_tokens == 2


def _config(model: Path, max_receive: int) -> Path:
    path = model.parent / f"limits-{max_receive}.toml"
    path.write_text(f"""
[server]
listen = ["127.0.0.1:0"]
max_receive_message_bytes = {max_receive}

[models.tiny]
path = "{model}"
n_ctx = 2048
n_parallel = 2
threads = 1
""")
    return path
