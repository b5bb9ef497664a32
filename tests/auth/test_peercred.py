"""SECURITY-CASES 28: no socket name the daemon uses can be claimed by
another local user, to pass for another uid or to block a client.

Each test runs a real grpc.aio server whose one method answers the call's
peer string, the string the authenticator turns into `uid:N`.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator

import grpc
import pytest

from runtime.auth import peercred
from runtime.auth.peercred import UnixPeerFront, peer_uid
from runtime.config import parse_config
from runtime.config_values import check_listen_address
from runtime.errors import ConfigError, Unavailable


async def _echo_peer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return (context.peer() or "").encode()


@contextlib.asynccontextmanager
async def peer_server(address: str) -> AsyncIterator[None]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.T", {"Peer": grpc.unary_unary_rpc_method_handler(_echo_peer)}),))
    server.add_insecure_port(address)
    await server.start()
    try:
        yield
    finally:
        await server.stop(0)


async def call_peer(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await channel.unary_unary("/t.T/Peer")(b"", timeout=10)
    return reply.decode()


@contextlib.asynccontextmanager
async def front(tmp: str) -> AsyncIterator[tuple[str, str]]:
    """gRPC on a socket in a fresh 0700 directory, behind the front; yields
    (public socket address, private directory)."""
    private = tempfile.mkdtemp(prefix="hearth-sock-")
    internal = os.path.join(private, "grpc.sock")
    public = os.path.join(tmp, "public.sock")
    async with peer_server("unix:" + internal):
        f = UnixPeerFront(public, internal)
        await f.start()
        try:
            yield "unix:" + public, private
        finally:
            await f.close()
            with contextlib.suppress(OSError):
                os.rmdir(private)


@pytest.mark.parametrize("table, key", [("server", "listen"), ("tls", "listen")])
def test_config_refuses_abstract_listeners(table: str, key: str) -> None:
    """Fails on e3a5e70: `unix-abstract:hearth:1` parsed as HOST:PORT and
    was accepted (checked by running this test there)."""
    with pytest.raises(ConfigError, match="abstract unix sockets are refused"):
        parse_config({table: {key: ["unix-abstract:hearth:1"]}})
    with pytest.raises(ConfigError, match="abstract"):
        check_listen_address("unix-abstract:hearth-peer/0/0/1:1", "--listen")


def test_a_claimed_abstract_name_passes_for_no_uid() -> None:
    """An attacker's connection from a socket bound to the abstract name the
    old front used (`hearth-peer/0/0/<pid>/<n>`) reaches gRPC with that name
    as its peer, and is not taken for uid 0.  Fails on e3a5e70: peer_uid
    answered (0, 0, 1) for it (checked by running this test there)."""
    async def scenario() -> str:
        name = f"hearth-test-{os.getpid()}"
        async with peer_server(f"unix-abstract:{name}"):
            # what an attacker does: bind the name, connect, and relay a
            # gRPC channel through that connection
            with tempfile.TemporaryDirectory() as tmp:
                relay_path = os.path.join(tmp, "relay.sock")

                async def relay(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
                    inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    inner.bind(f"\0hearth-peer/0/0/1/{os.getpid()}")
                    inner.connect(f"\0{name}")
                    up_reader, up_writer = await asyncio.open_unix_connection(sock=inner)
                    await asyncio.gather(peercred._pipe(reader, up_writer),
                                         peercred._pipe(up_reader, writer),
                                         return_exceptions=True)

                server = await asyncio.start_unix_server(relay, path=relay_path)
                try:
                    return await call_peer("unix:" + relay_path)
                finally:
                    server.close()
    peer = asyncio.run(scenario())
    assert peer.startswith("unix-abstract:hearth-peer/0/0/1/")   # the attack got through
    assert peer_uid(peer) is None


def test_pre_bound_names_do_not_block_a_client(tmp_path: object) -> None:
    """Another user binding the names the front would use for this client's
    pid does not stop the client, and it is still identified.  Fails on
    e3a5e70: the front's bind hit EADDRINUSE and dropped the connection, so
    the call failed UNAVAILABLE (checked by running this test there)."""
    uid, gid, pid = os.getuid(), os.getgid(), os.getpid()
    squatters = []
    for n in range(1, 65):      # the old front's names for this pid
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"\0hearth-peer/{uid}/{gid}/{pid}/{n}")
        squatters.append(s)

    async def scenario() -> tuple[str, tuple | None, list[str]]:
        async with front(str(tmp_path)) as (public, private):
            peer = await call_peer(public)
            return peer, peer_uid(peer), os.listdir(private)
    try:
        peer, identified, left = asyncio.run(scenario())
    finally:
        for s in squatters:
            s.close()
    assert identified == (os.getuid(), os.getgid(), os.getpid())
    assert peer_uid(peer) is None        # the front has closed: its names are void
    assert not [n for n in left if n.startswith("peer-")]   # unlinked once connected


def test_peer_names_are_trusted_only_inside_a_running_fronts_directory(tmp_path: object
                                                                       ) -> None:
    """The uid comes from a path in the front's own 0700 directory, and only
    while the front runs; the same name anywhere else means nothing.  Fails
    on e3a5e70: peer_uid trusted any `unix-abstract:hearth-peer/...` string
    and nothing else (checked by running this test there)."""
    async def scenario() -> tuple[str, tuple | None, int]:
        async with front(str(tmp_path)) as (public, private):
            peer = await call_peer(public)
            mode = os.stat(private).st_mode & 0o777
            return peer, peer_uid(peer), mode
    peer, identified, mode = asyncio.run(scenario())
    assert identified == (os.getuid(), os.getgid(), os.getpid())
    assert mode == 0o700
    assert peer_uid(peer.replace("/peer-", "/x/peer-")) is None
    assert peer_uid("unix:/tmp/peer-0-0-1-1") is None
    assert peer_uid("unix-abstract:hearth-peer/0/0/1/1") is None


def test_the_front_refuses_a_directory_others_can_enter(tmp_path: object) -> None:
    """A relay directory another user could write to (or connect in) is
    refused at start.  Fails on e3a5e70: the front did not check it (checked
    by running this test there: no error was raised)."""
    shared = tempfile.mkdtemp(prefix="hearth-sock-")
    os.chmod(shared, 0o755)

    async def scenario() -> None:
        f = UnixPeerFront(os.path.join(str(tmp_path), "public.sock"),
                          os.path.join(shared, "grpc.sock"))
        try:
            await f.start()
        finally:
            await f.close()
    try:
        with pytest.raises(Unavailable, match="mode 0700"):
            asyncio.run(scenario())
    finally:
        os.rmdir(shared)
