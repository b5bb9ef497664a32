"""Opening a model's, draft's or adapter's bytes: the one place a source
becomes a checked file descriptor.

A file is opened once: without blocking (a FIFO cannot stall the load), and
in the models directory without following a symlink.  The descriptor must
be a regular file; its GGUF header is checked on it, and the engine loads
from that same descriptor, so nothing can be swapped between the check and
the load.  A sealed object is decrypted, every chunk verified, into a sealed
memfd, and its header is checked in the same way.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from runtime.errors import ModelLoadError
from runtime.models.gguf_file import GGUFInfo, inspect_gguf_fd
from runtime.sources import Source, StoredSource
from runtime.storage.store import Kind, SealedStore


@dataclass
class OpenedSource:
    """A checked descriptor; the caller closes it (after the engine has
    loaded from it)."""
    fd: int
    info: GGUFInfo
    description: str        # what ModelStatus.source and the logs show

    def close(self) -> None:
        os.close(self.fd)


def open_source(source: Source, kind: str, label: str, store: SealedStore | None,
                no_symlink: bool = False) -> OpenedSource:
    """Opens `source`, which must be a GGUF of `kind` ("model" or
    "adapter"); raises ModelLoadError naming `label`."""
    if isinstance(source, StoredSource):
        if store is None:
            raise ModelLoadError(f"{label}: {source} needs the sealed store's master key "
                                 "(--key-file, --passphrase-file or --credential)")
        fd, obj = store.open_memfd(Kind(kind), source.name)
        description = f"{source} v{obj.version} ({obj.sha256[:12]})"
    else:
        fd = _open_regular(source.path, label, no_symlink)
        description = source.path
    try:
        info = inspect_gguf_fd(fd, label, str(source))
        if info.kind != kind:
            article = "an" if kind[0] in "aeiou" else "a"
            raise ModelLoadError(f"{label}: {source} is a {info.kind}, not {article} {kind}")
    except BaseException:
        os.close(fd)
        raise
    return OpenedSource(fd, info, description)


def _open_regular(path: str, label: str, no_symlink: bool) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (os.O_NOFOLLOW if no_symlink else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if no_symlink and os.path.islink(path):
            raise ModelLoadError(f"{label}: {path} is not a regular file in the models "
                                 "directory (a symlink)") from None
        raise ModelLoadError(f"{label}: cannot open {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ModelLoadError(f"{label}: {path} is not a regular file")
    return fd
