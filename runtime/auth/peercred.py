"""Unix socket callers, identified by the kernel.

gRPC does not expose the credentials of a unix socket peer.  So the public
socket is served by this front: for each connection it reads SO_PEERCRED
(pid, uid, gid), then relays the bytes to the gRPC server's private socket
(in a 0700 directory: nobody else can reach it) from a client socket bound
to the abstract name `hearth-peer/<uid>/<gid>/<pid>/<n>`.  gRPC reports that
name as the call's peer, and the authenticator turns it into `uid:<uid>`.
Who may connect at all is decided by the public socket's file permissions.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import socket
import struct

log = logging.getLogger("hearth.auth")

PEER_PREFIX = "hearth-peer/"
_PEER = re.compile(r"^unix-abstract:hearth-peer/(\d+)/(\d+)/(\d+)/\d+$")
_CREDS = struct.Struct("3i")


def peer_uid(peer: str) -> tuple[int, int, int] | None:
    """(uid, gid, pid) of a call that came through the front, else None."""
    m = _PEER.match(peer)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


class UnixPeerFront:
    def __init__(self, public_path: str, internal_path: str, mode: int = 0o660) -> None:
        self.public_path = public_path
        self.internal_path = internal_path
        self.mode = mode
        self._server: asyncio.AbstractServer | None = None
        self._counter = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        if os.path.exists(self.public_path) and not os.path.isdir(self.public_path):
            os.unlink(self.public_path)   # a stale socket from an earlier run
        self._server = await asyncio.start_unix_server(self._handle, path=self.public_path)
        os.chmod(self.public_path, self.mode)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, gid = _CREDS.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
            inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            inner.bind(f"\0{PEER_PREFIX}{uid}/{gid}/{pid}/{next(self._counter)}")
            inner.setblocking(False)
            await asyncio.get_running_loop().sock_connect(inner, self.internal_path)
            up_reader, up_writer = await asyncio.open_unix_connection(sock=inner)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                                 return_exceptions=True)
        except OSError as exc:
            log.warning("unix socket connection failed: %s", exc)
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.close()
