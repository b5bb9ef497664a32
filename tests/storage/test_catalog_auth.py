"""The authenticated catalog (SECURITY-CASES 29): with write access to the
state directory but no master key, no edit, deletion or rollback of a row,
no truncated WAL and no emptied table goes unnoticed; the store refuses to
open and names the table.  The honest paths keep working.

Every attack test here fails on e3a5e70 (checked by running this file
against that commit's runtime/: the reopen succeeded, e.g. the raised
token opened as `*`/admin and the deleted model version fell back to v1)."""
from __future__ import annotations

import base64
import hmac
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.auth.tokens import TokenStore
from runtime.errors import FailedPrecondition, IntegrityError, Unauthenticated, WrongKey
from runtime.events import RequestFinished
from runtime.storage.audit import AuditLog
from runtime.storage.catalog import Catalog
from runtime.storage.keys import KeySource, derive_kek
from runtime.storage.store import SealedStore

KEY = KeySource("key-file", "k", b"k" * 32)
NEW = KeySource("key-file", "n", b"n" * 32)


def populate(state: Path) -> dict[str, str]:
    """A realistic state directory: two model versions, two federation site
    records, a limited token, a revoked token, an audit log."""
    store = SealedStore.init(state, KEY)
    store.put_bytes("model", "ward", b"weights v1")
    store.put_bytes("model", "ward", b"weights v2")
    store.put_bytes("federation", "site", json.dumps({"high_water": 1}).encode())
    store.put_bytes("federation", "site", json.dumps({"high_water": 2}).encode())
    tokens = TokenStore(store)
    limited = tokens.create("ward-app", ["ward"])
    revoked = tokens.create("old-app", ["ward"])
    tokens.revoke("old-app")
    audit = AuditLog(store)
    audit.start()
    audit.record(RequestFinished("r1", "ward", "c", "generate", "ok", "stop", 1, 1, 0, 0, 0, 0))
    audit.close()
    store.close()
    return {"limited": limited, "revoked": revoked}


def raw(state: Path, *sql: str) -> None:
    """What an attacker with write access and no key can do."""
    db = sqlite3.connect(state / "catalog.sqlite", isolation_level=None)
    for statement in sql:
        db.execute(statement)
    db.close()


def refused(state: Path, table: str) -> IntegrityError:
    with pytest.raises(IntegrityError, match=f"catalog table [a-z_, ]*{table}") as info:
        SealedStore.open(state, KEY).close()
    return info.value


@pytest.fixture
def state(tmp_path: Path) -> Path:
    populate(tmp_path / "state")
    return tmp_path / "state"


def test_a_token_raised_to_admin_is_detected(state: Path) -> None:
    raw(state, "UPDATE tokens SET models='[\"*\"]', admin=1 WHERE name='ward-app'")
    refused(state, "tokens")


def test_a_revoked_token_brought_back_is_detected(state: Path) -> None:
    raw(state, "UPDATE tokens SET revoked_at=NULL WHERE name='old-app'")
    refused(state, "tokens")


def test_deleting_the_newest_model_version_is_detected(state: Path) -> None:
    raw(state, "DELETE FROM objects WHERE kind='model' AND name='ward' AND version=2")
    refused(state, "objects")


def test_deleting_newer_federation_records_is_detected(state: Path) -> None:
    """The high-water mark lives in the newest `federation/site` object."""
    raw(state, "DELETE FROM objects WHERE kind='federation' AND version=2")
    refused(state, "objects")


def test_a_row_rolled_back_to_its_earlier_value_is_detected(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SealedStore.init(state, KEY)
    tokens = TokenStore(store)
    tokens.create("app", ["ward"])
    before = store.catalog.db.execute("SELECT revoked_at FROM tokens").fetchone()
    tokens.revoke("app")
    store.close()
    assert before == (None,)
    raw(state, "UPDATE tokens SET revoked_at=NULL")          # the row as it was
    refused(state, "tokens")


def test_an_edited_audit_anchor_is_detected(state: Path) -> None:
    raw(state, "UPDATE audit_state SET seq=seq-1")
    refused(state, "audit_state")


@pytest.mark.parametrize("table", ["tokens", "objects", "audit_state"])
def test_an_emptied_or_dropped_table_is_detected(state: Path, table: str) -> None:
    raw(state, f"DELETE FROM {table}")
    refused(state, table)
    raw(state, f"DROP TABLE {table}")
    refused(state, table)


def test_the_authentication_head_cannot_be_removed_or_edited(state: Path) -> None:
    shutil.copy(state / "catalog.sqlite", state / "saved")
    raw(state, "UPDATE catalog_auth SET counter=counter+5")
    refused(state, "catalog_auth")
    shutil.copy(state / "saved", state / "catalog.sqlite")
    raw(state, "DELETE FROM catalog_auth")
    refused(state, "catalog_auth")
    (state / "catalog.sqlite").unlink()                     # the whole catalog
    refused(state, "catalog_auth")


def _wal_writer(state: Path, code: str) -> subprocess.CompletedProcess:
    """Runs `code` with the store open and exits without closing it, as a
    killed daemon would: the catalog's last commits stay in its WAL."""
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from runtime.auth.tokens import TokenStore
        from runtime.storage.keys import KeySource, derive_kek
        from runtime.storage.store import SealedStore
        state = Path({str(state)!r})
        store = SealedStore.open(state, KeySource("key-file", "k", b"k" * 32))
        wal = state / "catalog.sqlite-wal"
    """) + textwrap.dedent(code) + "\nos._exit(0)\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_truncated_wal_is_detected_and_names_the_table(state: Path) -> None:
    """Cutting the WAL back to before a revoke brings the token back in
    SQLite's eyes; the counter's copy outside SQLite shows the rollback."""
    proc = _wal_writer(state, """
        tokens = TokenStore(store)
        tokens.create("late-app", ["ward"])
        print(wal.stat().st_size)
        tokens.revoke("late-app")
    """)
    before_revoke = int(proc.stdout.split()[0])
    os.truncate(state / "catalog.sqlite-wal", before_revoke)
    (state / "catalog.sqlite-shm").unlink()
    error = refused(state, "tokens")
    assert "rolled back" in str(error)


def test_a_kill_after_a_commit_is_not_mistaken_for_tampering(state: Path) -> None:
    """The honest twin of the WAL test: the same WAL, uncut, opens."""
    _wal_writer(state, """
        TokenStore(store).create("late-app", ["ward"])
    """)
    store = SealedStore.open(state, KEY)
    assert "late-app" in {t.name for t in TokenStore(store).list()}
    store.close()


def test_an_edit_while_open_is_not_laundered_by_the_next_write(state: Path) -> None:
    store = SealedStore.open(state, KEY)
    raw(state, "UPDATE tokens SET admin=1 WHERE name='ward-app'")
    with pytest.raises(IntegrityError, match="catalog table tokens"):
        TokenStore(store).create("another", ["ward"])
    store.close()
    refused(state, "tokens")


def test_honest_paths_keep_working(state: Path, tmp_path: Path) -> None:
    """Revoke, re-import and rotation each reopen cleanly, and what they
    changed holds."""
    store = SealedStore.open(state, KEY)
    tokens = TokenStore(store)
    limited = tokens.create("ward-2", ["ward"])
    tokens.revoke("ward-app")
    store.put_bytes("model", "ward", b"weights v3")
    store.rotate(NEW)
    store.close()
    with pytest.raises(WrongKey):
        SealedStore.open(state, KEY)
    store = SealedStore.open(state, NEW)
    tokens = TokenStore(store)
    assert tokens.verify(limited).models == frozenset({"ward"})
    assert store.read_bytes("model", "ward") == b"weights v3"
    assert {t.name for t in tokens.list() if t.revoked_at is None} == {"ward-2"}
    store.close()


def test_the_revoked_token_stays_revoked(state: Path, tmp_path: Path) -> None:
    populated = populate(tmp_path / "again")
    store = SealedStore.open(tmp_path / "again", KEY)
    with pytest.raises(Unauthenticated):
        TokenStore(store).verify(populated["revoked"])
    store.close()


def _make_legacy(state: Path) -> None:
    """Turns a state directory into what e3a5e70 left: no head, no copy,
    a keyring check of the first kind."""
    raw(state, "DELETE FROM catalog_auth")
    (state / "catalog.counter").unlink()
    keyring = json.loads((state / "keyring.json").read_text())
    entry = keyring["keks"][0]
    kek = derive_kek(KEY, entry)
    entry["check"] = base64.b64encode(hmac.digest(kek, b"hearth keyring check v1",
                                                  "sha256")).decode()
    (state / "keyring.json").write_text(json.dumps(keyring))


def test_a_catalog_from_before_is_migrated_once(state: Path) -> None:
    """The first open with the key trusts the catalog as it is and
    authenticates it; from then on a stripped head is refused again."""
    _make_legacy(state)
    store = SealedStore.open(state, KEY)
    assert store.read_bytes("model", "ward") == b"weights v2"
    store.close()
    store = SealedStore.open(state, KEY)     # authenticated now: opens again
    store.close()
    raw(state, "DELETE FROM catalog_auth")
    (state / "catalog.counter").unlink()
    refused(state, "catalog_auth")


def test_writes_go_only_to_the_tables_a_transaction_declares(tmp_path: Path) -> None:
    """A write the head would not cover is refused by SQLite's authorizer;
    without the key, nothing can be written at all."""
    store = SealedStore.init(tmp_path / "state", KEY)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"), \
            store.catalog.transaction("audit_state") as db:
        db.execute("DELETE FROM tokens")
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        store.catalog.db.execute("DELETE FROM tokens")    # outside any transaction
    store.close()
    keyless = Catalog(tmp_path / "state" / "catalog.sqlite")
    with pytest.raises(FailedPrecondition), keyless.transaction():
        pass
    keyless.close()
    SealedStore.open(tmp_path / "state", KEY).close()


def test_an_edit_while_running_is_refused_by_the_next_reader(tmp_path: Path) -> None:
    """A daemon does not wait for its next start: a token lookup and a model
    read check their table first."""
    state = tmp_path / "state"
    populated = populate(state)
    store = SealedStore.open(state, KEY)
    tokens = TokenStore(store)
    assert tokens.verify(populated["limited"]).models == frozenset({"ward"})
    raw(state, "UPDATE tokens SET models='[\"*\"]', admin=1 WHERE name='ward-app'")
    tokens.forget_cached()
    with pytest.raises(IntegrityError, match="catalog table tokens"):
        tokens.verify(populated["limited"])
    raw(state, "DELETE FROM objects WHERE kind='model' AND version=2")
    with pytest.raises(IntegrityError, match="catalog table objects"):
        store.read_bytes("model", "ward")
    store.close()


def test_the_daemon_refuses_to_start_naming_the_table(state: Path, tmp_path: Path) -> None:
    """`hearth serve` opens the store first: on a tampered catalog it exits
    with the integrity code and names the table (fails on e3a5e70: checked,
    it started serving)."""
    raw(state, "UPDATE tokens SET admin=1 WHERE name='ward-app'")
    key_file = tmp_path / "master.key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", "--state-dir",
                           str(state), "--key-file", str(key_file), "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert "catalog table tokens" in proc.stderr
