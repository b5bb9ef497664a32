"""docs/storage.md promises: the state directory is 0700 and every file in
it 0600, whatever the umask.

Fails on e3a5e70 (checked by running it against that commit's runtime/:
catalog.sqlite, its -wal and -shm files and audit/signing.pub were 0644
under umask 022)."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.auth.tokens import TokenStore
from runtime.events import RequestFinished
from runtime.storage.audit import AuditLog
from runtime.storage.keys import KeySource
from runtime.storage.store import SealedStore


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_every_file_in_the_state_directory_is_0600(tmp_path: Path, tiny_model: Path,
                                                     umask_022: None) -> None:
    state = tmp_path / "state"
    store = SealedStore.init(state, KeySource("key-file", "k", b"k" * 32))
    store.import_file(tiny_model, "tiny")
    TokenStore(store).create("ward", ["tiny"])
    audit = AuditLog(store)
    audit.start()
    audit.record(RequestFinished("r", "tiny", "c", "generate", "ok", "stop", 1, 1, 0, 0, 0, 0))
    audit.close()
    # look while the catalog is still open: its -wal and -shm files exist now
    modes = {str(p.relative_to(state)): stat.S_IMODE(p.stat().st_mode)
             for p in state.rglob("*")}
    store.close()
    assert {"catalog.sqlite-wal", "catalog.sqlite-shm", "audit/signing.pub",
            "audit/log.jsonl", "keyring.json"} <= modes.keys()
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (state / name).is_dir() else 0o600)}
    assert not wrong
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
