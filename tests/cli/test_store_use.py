"""Local commands open the sealed store through cli/state.py's opened_store,
which closes it whatever happens in the block."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from runtime.cli import tokens
from runtime.errors import AlreadyExists
from runtime.storage.keys import create_key_file, key_source
from runtime.storage.store import SealedStore


def test_a_failing_store_command_still_closes_the_store(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails on e3a5e70: `hearth tokens create` for a name that exists raised
    before its store.close() (checked by running this test there: no close)."""
    key = tmp_path / "master.key"
    create_key_file(str(key))
    args = argparse.Namespace(state_dir=str(tmp_path / "state"), key_file=str(key),
                              passphrase_file=None, credential=None, name="ward",
                              models="tiny", admin=False)
    SealedStore.init(Path(args.state_dir), key_source(str(key), None, None)).close()
    tokens.cmd_create(args)
    closed: list[SealedStore] = []
    real_close = SealedStore.close

    def counting_close(self: SealedStore) -> None:
        closed.append(self)
        real_close(self)
    monkeypatch.setattr(SealedStore, "close", counting_close)
    with pytest.raises(AlreadyExists):
        tokens.cmd_create(args)
    assert len(closed) == 1
