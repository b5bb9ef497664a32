"""The state directory and master key options every local command shares,
and `opened_store`, the one way a command opens the sealed store.

    with opened_store(args) as store:
        ...                     # closed on the way out, error or not
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from runtime.storage.keys import KeySource, key_source
from runtime.storage.paths import state_dir
from runtime.storage.store import SealedStore


def add_state_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("state and master key")
    g.add_argument("--state-dir", help="state directory (default: $HEARTH_STATE_DIR, "
                                       "~/.local/share/hearth, or /var/lib/hearth under systemd)")
    g.add_argument("--key-file", help="master key file (mode 0600)")
    g.add_argument("--passphrase-file", help="file holding the master passphrase")
    g.add_argument("--credential", help="systemd credential holding the master key")


def keyed(args: argparse.Namespace) -> bool:
    """Whether the command line names a master key source (else a prompt
    would ask for one)."""
    return bool(args.key_file or args.passphrase_file or args.credential)


def source_of(args: argparse.Namespace, confirm: bool = False) -> KeySource:
    return key_source(args.key_file, args.passphrase_file, args.credential, confirm)


def open_store(args: argparse.Namespace) -> SealedStore:
    """The store, for a caller that keeps it open beyond one block (the
    caller closes it); everything else uses opened_store."""
    return SealedStore.open(state_dir(args.state_dir), source_of(args))


@contextmanager
def opened_store(args: argparse.Namespace) -> Iterator[SealedStore]:
    """The sealed store of --state-dir, unlocked with the command line's key
    source, closed when the block ends (also on an error)."""
    store = open_store(args)
    try:
        yield store
    finally:
        store.close()
