"""Cancellation, deadlines, queue limits and message sizes against the real
daemon (SECURITY-CASES 12, 13, 14)."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime.client import HearthClient
from tests.integration.conftest import Daemon

LONG = {"max_tokens": 900, "temperature": 0.0, "ignore_eos": True}
# Far more than the tiny model makes before a cancel or a deadline lands: a
# server that ignored them would run to the end (seconds), one that obeys
# stops after a small fraction.
ASKED = 4000
VERY_LONG = {"max_tokens": ASKED, "temperature": 0.0, "ignore_eos": True}


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def one_slot(daemon_factory, tiny_model: Path) -> Daemon:  # type: ignore[no-untyped-def]
    return daemon_factory("--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                          "--parallel", "1", "--ctx", "4096", "--max-queue", "1",
                          "--threads", "1", "--log-format", "json")


def assert_stopped_early(c: HearthClient, before: int) -> int:
    """The server's own count: the slot is free, far fewer tokens than asked
    were generated, and no compute goes on for the request afterwards."""
    wait_for(lambda: c.get_model().slots_busy == 0)
    generated = c.get_model().tokens_generated - before
    assert 0 < generated < ASKED // 2, generated
    time.sleep(0.3)
    assert c.get_model().tokens_generated - before == generated
    return generated


class OneWayProxy:
    """A TCP proxy whose client-to-server direction can be cut: after the
    cut, nothing the client sends (its RST_STREAM on a deadline, a cancel)
    reaches the server, while the server's replies still flow back."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                down, _ = self.listener.accept()
                up = socket.create_connection(self.upstream)
                self.sockets += [down, up]
                threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not (from_client and self.cut.is_set()):
                    dst.sendall(data)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def test_client_cancel_frees_the_slot_and_stops_compute(one_slot: Daemon) -> None:
    """Fails if the server ignored the cancel: with NativeRequest.free not
    freeing (so not cancelling) the request in runtime/native/engine.py, it
    ran to all 4000 tokens, which the server's own count shows."""
    with one_slot.client() as c:
        before = c.get_model().tokens_generated
        call = c.inference.Generate(ipb.GenerateRequest(prompt="hello", **VERY_LONG))
        next(call)
        assert c.get_model().slots_busy == 1
        call.cancel()
        assert_stopped_early(c, before)
        # The slot is usable at once.
        assert c.complete("again", max_tokens=3)[2].usage.completion_tokens == 3


def test_the_server_enforces_the_deadline_without_the_clients_help(one_slot: Daemon) -> None:
    """The request goes through a proxy that, once the first chunk is in,
    no longer passes anything from the client to the server, so the
    client's own deadline (its RST_STREAM) never reaches the daemon: only
    the server's deadline can stop the generation.  The server's count
    shows it stopped early and its own request record (the JSON log line)
    ends the request at the deadline: the engine's (DeadlineExceeded) or
    gRPC's server-side timer cancelling the handler, which frees the
    request (in practice the latter wins the race).  Checked that it fails
    when the server ignores deadlines: with native/engine.py passing
    deadline_ns=0 and NativeRequest.free not freeing, it ran to 4000."""
    proxy = OneWayProxy(one_slot.tcp)
    try:
        with one_slot.client() as c, HearthClient(proxy.address, timeout=60) as via_proxy:
            before = c.get_model().tokens_generated
            call = via_proxy.inference.Generate(
                ipb.GenerateRequest(prompt="hi", **VERY_LONG), timeout=0.5,
                metadata=(("x-request-id", "deadline-1"),))
            next(call)
            proxy.cut.set()
            with pytest.raises(grpc.RpcError) as err:
                for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            generated = assert_stopped_early(c, before)
    finally:
        proxy.close()
    records = [json.loads(line) for line in one_slot.log().splitlines()
               if line.startswith("{") and '"deadline-1"' in line]
    assert len(records) == 1, one_slot.log()
    record = records[0]
    # Which of the server's two deadline paths wins decides the record's words
    # (and a handler cancelled by gRPC's timer closes with GeneratorExit, its
    # count not yet taken): the stop itself is what assert_stopped_early shows.
    assert record["msg"] in ("generate tiny DeadlineExceeded deadline",
                             "generate tiny CancelledError cancelled",
                             "generate tiny GeneratorExit cancelled"), record
    assert 0 <= record["completion_tokens"] <= generated


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
