"""Durable file writes: temp file, fsync, rename, fsync of the folder.

A crash leaves the old file or the new one, never half of either; a full
disk fails with StorageError and leaves the old file as it was.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from runtime.errors import StorageError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(exc: OSError, what: str) -> StorageError:
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
        else exc.strerror or str(exc)
    return StorageError(f"{what}: {reason}; nothing was changed")


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o600, what: str = "") -> Iterator[BinaryIO]:
    """Yields a temp file next to `path` (named .tmp-*, which the store's
    recovery removes); on success it is fsynced and replaces `path`."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(exc, what or f"writing {path.name}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    with atomic_file(path, mode) as f:
        f.write(data)


def private_dir(path: Path) -> Path:
    """Creates `path` (and parents) readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
