"""Unix socket callers, identified by the kernel.

gRPC does not expose the credentials of a unix socket peer.  So the public
socket is served by this front: for each connection it reads SO_PEERCRED
(pid, uid, gid), then relays the bytes to the gRPC server's private socket
from a client socket bound to the path `<dir>/peer-<uid>-<gid>-<pid>-<n>`.
gRPC reports that path as the call's peer, and the authenticator turns it
into `uid:<uid>`.  Who may connect at all is decided by the public socket's
file permissions.

No name the front uses can be claimed by another user: gRPC's socket and
every relay socket live in one directory that is the daemon's, mode 0700,
checked at start, so nobody else can connect to gRPC (and choose a peer
name) or create a name there first (and block a client).  Abstract socket
names are never used: they have no owner and no permissions, any local user
could bind one (the config refuses `unix-abstract:` listeners for the same
reason), and peer_uid trusts only paths inside a directory a running front
registered.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import socket
import stat
import struct

from runtime.errors import Unavailable

log = logging.getLogger("hearth.auth")

_PEER = re.compile(r"unix:(/.+)/peer-(\d+)-(\d+)-(\d+)-\d+")
_CREDS = struct.Struct("3i")
# One counter for every front in the process: fronts may share a directory.
_COUNTER = itertools.count(1)
# Directories of running fronts: the only places a trusted peer name can be.
_TRUSTED_DIRS: dict[str, int] = {}


def peer_uid(peer: str) -> tuple[int, int, int] | None:
    """(uid, gid, pid) of a call that came through a running front, else None."""
    m = _PEER.fullmatch(peer)
    if m is None or m.group(1) not in _TRUSTED_DIRS:
        return None
    return int(m.group(2)), int(m.group(3)), int(m.group(4))


# sun_path holds 107 bytes and a NUL; the longest relay name must fit
_MAX_SOCKET_PATH = 107
_LONGEST_RELAY_NAME = len(f"/peer-{2**32 - 1}-{2**32 - 1}-{2**32 - 1}-{10**12}")


def check_private_dir(path: str) -> None:
    """The relay directory must be ours and closed to everyone else, or
    another user could connect to gRPC or squat on a relay name."""
    info = os.lstat(path)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or stat.S_IMODE(info.st_mode) & 0o077):
        raise Unavailable(f"{path}: the private socket directory must be a directory owned "
                          f"by uid {os.geteuid()} with mode 0700")
    if len(os.fsencode(path)) + _LONGEST_RELAY_NAME > _MAX_SOCKET_PATH:
        raise Unavailable(f"{path}: too long a path for the unix socket front's relay "
                          "sockets; set RUNTIME_DIRECTORY (or TMPDIR) to a shorter folder")


class UnixPeerFront:
    def __init__(self, public_path: str, internal_path: str, mode: int = 0o660) -> None:
        self.public_path = public_path
        self.internal_path = internal_path
        self.private_dir = os.path.dirname(os.path.abspath(internal_path))
        self.mode = mode
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        check_private_dir(self.private_dir)
        if os.path.exists(self.public_path) and not os.path.isdir(self.public_path):
            os.unlink(self.public_path)   # a stale socket from an earlier run
        self._server = await asyncio.start_unix_server(self._handle, path=self.public_path)
        os.chmod(self.public_path, self.mode)
        _TRUSTED_DIRS[self.private_dir] = _TRUSTED_DIRS.get(self.private_dir, 0) + 1

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            left = _TRUSTED_DIRS.pop(self.private_dir, 1) - 1
            if left:
                _TRUSTED_DIRS[self.private_dir] = left
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)

    def _relay_socket(self, uid: int, gid: int, pid: int) -> socket.socket:
        """A client socket whose bound path tells gRPC who is calling."""
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            inner.bind(os.path.join(self.private_dir,
                                    f"peer-{uid}-{gid}-{pid}-{next(_COUNTER)}"))
            inner.setblocking(False)
        except OSError:
            inner.close()
            raise
        return inner

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, gid = _CREDS.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
            inner = self._relay_socket(uid, gid, pid)
            try:
                try:
                    await asyncio.get_running_loop().sock_connect(inner, self.internal_path)
                finally:
                    # the connection keeps the name it was bound to; the file
                    # is not needed beyond connect, and removing it keeps the
                    # directory from filling up
                    with contextlib.suppress(OSError):
                        os.unlink(inner.getsockname())
                up_reader, up_writer = await asyncio.open_unix_connection(sock=inner)
            except BaseException:
                inner.close()
                raise
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                                 return_exceptions=True)
        except OSError as exc:
            log.warning("unix socket connection failed: %s", exc)
        except asyncio.CancelledError:
            pass      # close(): the connection ends here, and so does its task
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
