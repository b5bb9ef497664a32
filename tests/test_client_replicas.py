"""HearthClient over several replicas, against in-process fake servers.

These pin the gRPC behaviour docs/scale-out.md promises: round-robin over the
replicas that report SERVING, a refusal with UNAVAILABLE before any response
header retried on another replica, and a call that has received headers or a
message never retried (gRPC commits it).
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runtime import errors
from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import inference_pb2_grpc as igrpc
from runtime.client import (
    HEALTH_SERVICE,
    SERVICE_CONFIG,
    AsyncHearthClient,
    Credentials,
    HearthClient,
    parse_target,
)
from tests.auth.certs import CA, Issued

DOCS = Path(__file__).resolve().parents[1] / "docs" / "scale-out.md"


class Attempts:
    """Counts Generate attempts across replicas; `behave(n, context)` decides
    what attempt n (from 1) does before answering."""

    def __init__(self, behave: Callable[[int, grpc.ServicerContext], None]) -> None:
        self.behave = behave
        self.count = 0
        self.lock = threading.Lock()

    def next(self) -> int:
        with self.lock:
            self.count += 1
            return self.count


class FakeInference(igrpc.InferenceServicer):
    def __init__(self, name: str, attempts: Attempts) -> None:
        self.name = name
        self.attempts = attempts

    def Generate(self, request: ipb.GenerateRequest, context: grpc.ServicerContext
                 ) -> Iterator[ipb.GenerateResponse]:
        n = self.attempts.next()
        self.attempts.behave(n, context)
        yield ipb.GenerateResponse(text=self.name)
        if request.prompt == "fail-after-first-token":
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica went away mid-stream")
        yield ipb.GenerateResponse(text="!")


class Replica:
    def __init__(self, name: str, attempts: Attempts, tls: Issued | None = None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        igrpc.add_InferenceServicer_to_server(FakeInference(name, attempts), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.set(True)
        self.server.start()

    def set(self, serving: bool) -> None:
        self.health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING if serving
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


def _ok(n: int, context: grpc.ServicerContext) -> None:
    pass


@pytest.fixture
def replicas() -> Iterator[Callable[..., tuple[Replica, Replica, Attempts]]]:
    started: list[Replica] = []

    def make(behave: Callable[[int, grpc.ServicerContext], None] = _ok
             ) -> tuple[Replica, Replica, Attempts]:
        attempts = Attempts(behave)
        a, b = Replica("a", attempts), Replica("b", attempts)
        started.extend([a, b])
        return a, b, attempts

    yield make
    for r in started:
        r.server.stop(None)


def _served_by(client: HearthClient, n: int, prompt: str = "hi") -> list[str]:
    return [next(iter(client.generate(prompt))).text for _ in range(n)]


def test_parse_target_spellings() -> None:
    """Fails if a single address grows a service config (it must keep a
    plain channel) or a list is not turned into gRPC's static targets."""
    assert parse_target("127.0.0.1:50051").replicated is False
    assert parse_target("tls:127.0.0.1:1").target == "127.0.0.1:1"
    t = parse_target("tls:127.0.0.1:1, 127.0.0.2:2")
    assert (t.target, t.replicated, t.authority) == ("ipv4:127.0.0.1:1,127.0.0.2:2", True,
                                                     "127.0.0.1:1")
    t = parse_target("[::1]:1,[::1]:2")
    assert (t.target, t.authority) == ("ipv6:[::1]:1,[::1]:2", "[::1]:1")
    assert parse_target("unix:/a.sock,unix:/b.sock").target == "unix:/a.sock,/b.sock"
    assert parse_target("dns:///hearth.example").replicated is True
    assert parse_target("localhost:1,127.0.0.1:2").target.startswith("ipv4:127.0.0.1:1,")
    for bad in ("127.0.0.1:1,", "127.0.0.1:1,unix:/x", "127.0.0.1,127.0.0.2:1",
                "127.0.0.1:1,[::1]:2"):
        with pytest.raises(errors.InvalidArgument):
            parse_target(bad)


def _eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_round_robin_skips_a_replica_that_is_not_serving(replicas) -> None:
    """Calls alternate over both replicas, and none reach one whose health is
    NOT_SERVING once the client has seen it.  Fails without healthCheckConfig
    (b keeps getting calls) or with pick_first (only one replica is used)."""
    a, b, _ = replicas()
    with HearthClient(f"{a.addr},{b.addr}", timeout=10) as client:
        _eventually(lambda: set(_served_by(client, 4)) == {"a", "b"}, "never used both")
        b.set(False)
        _eventually(lambda: set(_served_by(client, 4)) == {"a"}, "b stayed in the rotation")
        assert set(_served_by(client, 16)) == {"a"}
        b.set(True)
        _eventually(lambda: set(_served_by(client, 4)) == {"a", "b"}, "b never came back")


def test_async_client_spreads_over_replicas_too(replicas) -> None:
    """AsyncHearthClient opens the same channel policy.  Fails if it keeps
    a single-address channel (it could not even parse the list)."""
    a, b, _ = replicas()

    async def served() -> set[str]:
        seen: set[str] = set()
        async with AsyncHearthClient(f"{a.addr},{b.addr}") as client:
            deadline = time.monotonic() + 10
            while seen != {"a", "b"} and time.monotonic() < deadline:
                async for chunk in client.generate("hi", timeout=10):
                    seen.add(chunk.text)
                    break
        return seen

    assert asyncio.run(served()) == {"a", "b"}


def test_tls_replicas_present_the_first_entry_as_authority(tmp_path: Path) -> None:
    """Both replicas' certificates name localhost; a list of localhost
    entries verifies against them.  Fails without the default authority
    (gRPC would check the whole list string against the certificates)."""
    ca = CA(tmp_path, "replica-ca")
    server = ca.issue("localhost", server=True)
    attempts = Attempts(_ok)
    a, b = Replica("a", attempts, server), Replica("b", attempts, server)
    try:
        with HearthClient(f"tls:localhost:{a.port},tls:localhost:{b.port}", timeout=10,
                          credentials=Credentials(ca_file=str(ca.pem))) as client:
            _eventually(lambda: set(_served_by(client, 4)) == {"a", "b"}, "never used both")
    finally:
        a.server.stop(None)
        b.server.stop(None)


def test_unavailable_before_headers_is_retried_on_another_replica(replicas) -> None:
    """The first attempt is refused with UNAVAILABLE before any header; the
    stream still completes, on the second attempt.  Fails without the
    retryPolicy (the caller sees UNAVAILABLE)."""
    def refuse_first(n: int, context: grpc.ServicerContext) -> None:
        if n == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")

    a, b, attempts = replicas(refuse_first)
    with HearthClient(f"{a.addr},{b.addr}", timeout=10) as client:
        chunks = list(client.generate("hi"))
    assert [c.text for c in chunks][1:] == ["!"] and attempts.count == 2


def test_unavailable_after_headers_is_not_retried(replicas) -> None:
    """Once response headers have arrived gRPC commits the call: this is why
    the servicer sends its headers with the first chunk (servicers.py).
    Fails if gRPC's commit rule changed (attempts would be 2)."""
    def headers_then_refuse(n: int, context: grpc.ServicerContext) -> None:
        if n == 1:
            context.send_initial_metadata((("x-request-id", "r1"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")

    a, b, attempts = replicas(headers_then_refuse)
    with HearthClient(f"{a.addr},{b.addr}", timeout=10) as client, \
            pytest.raises(grpc.RpcError) as err:
        list(client.generate("hi"))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE and attempts.count == 1


def test_stream_that_produced_a_token_is_never_retried(replicas) -> None:
    """A stream cut with UNAVAILABLE after its first message surfaces the error
    to the caller after that message; nothing is replayed.  Fails if the
    client retried it (attempts 2, a duplicated first chunk)."""
    a, b, attempts = replicas()
    with HearthClient(f"{a.addr},{b.addr}", timeout=10) as client:
        seen = []
        with pytest.raises(grpc.RpcError) as err:
            for chunk in client.generate("fail-after-first-token"):
                seen.append(chunk.text)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(seen) == 1 and attempts.count == 1


def test_docs_show_the_service_config_the_client_uses() -> None:
    """docs/scale-out.md's JSON block is SERVICE_CONFIG: fails when either
    changes without the other."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    assert SERVICE_CONFIG in [json.loads(b) for b in blocks]
