"""The catalog: what the store holds, in SQLite (WAL mode), with migrations,
authenticated under a key derived from the master key.

Rows name objects by kind, name and version and point at their sealed file
by a random id, so a user-supplied name never becomes a path.  The data key
is stored wrapped under the master key; the fields that could identify a
licensed model or a data set (size, SHA-256, where it came from) are sealed
under the object's own data key, so a master-key rotation re-wraps keys and
touches nothing else.  Deleted rows are overwritten (secure_delete), which
is what makes `hearth audit erase` a real crypto-shredding.

Authentication (SECURITY-CASES 29).  Every table is covered unless it is
named in UNAUTHENTICATED, so a table a later migration adds is covered by
declaring nothing.  The head row (table catalog_auth) holds, per table, a
digest of its rows, a counter raised by every write and the previous
head's MAC, all under an HMAC key derived from the master key; the same head
is copied into catalog.counter after each commit.  At open (catalog_auth.py
does the checking) an edited, deleted or rolled-back row changes its
table's digest, and a WAL truncated back to an earlier commit leaves the
catalog's counter below the copy's: either way the store refuses to open,
naming the table.  A write first checks the digests of the tables it
touches, so it never re-authenticates someone else's edit.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import FailedPrecondition, NotFound, StorageError
from runtime.storage import catalog_auth as auth
from runtime.storage.catalog_auth import AUTH_TABLE, CatalogKey, Head

MIGRATIONS: list[str] = [
    # 1: objects and their wrapped keys
    """
    CREATE TABLE objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        kek_id TEXT NOT NULL,
        wrapped_dek BLOB NOT NULL,
        sealed_meta BLOB NOT NULL,
        has_file INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (kind, name, version)
    );
    CREATE INDEX objects_by_name ON objects (kind, name, version);
    """,
    # 2: audit log anchor and per-subject content keys
    """
    CREATE TABLE audit_subjects (
        id TEXT PRIMARY KEY,
        kek_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE audit_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        head BLOB NOT NULL,
        log_size INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 3: API tokens (keyed hashes only)
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash BLOB NOT NULL,
        models TEXT NOT NULL,
        admin INTEGER NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
    """,
    # 4: the authentication head; the audit anchor's signature.  A column a
    # migration adds must default to NULL: NULLs are left out of row digests,
    # so existing digests stay valid without the key.
    f"""
    CREATE TABLE {AUTH_TABLE} (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        kek_id TEXT NOT NULL,
        counter INTEGER NOT NULL,
        prev BLOB NOT NULL,
        tables TEXT NOT NULL,
        mac BLOB NOT NULL
    );
    ALTER TABLE audit_state ADD COLUMN sig BLOB;
    """,
]

# Tables left out of the authentication (none: every table is security-relevant
# until someone argues otherwise here).
UNAUTHENTICATED: frozenset[str] = frozenset()
COUNTER_NAME = "catalog.counter"
_WRITES = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)


@dataclass(frozen=True)
class ObjectRow:
    id: str
    kind: str
    name: str
    version: int
    kek_id: str
    wrapped_dek: bytes
    sealed_meta: bytes
    has_file: bool
    created_at: float


def _row(r: tuple) -> ObjectRow:
    return ObjectRow(id=r[0], kind=r[1], name=r[2], version=int(r[3]), kek_id=r[4],
                     wrapped_dek=bytes(r[5]), sealed_meta=bytes(r[6]), has_file=bool(r[7]),
                     created_at=float(r[8]))


def _private_file(path: Path) -> None:
    """The catalog and its -wal/-shm files, owner-only.  SQLite gives the
    side files the database file's mode, so creating that 0600 first is
    enough for new catalogs; older ones are tightened here."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):      # missing, or not ours (a read-only auditor)
            os.chmod(p, 0o600)



class _Result:
    """A statement's whole result, read while the connection was held."""

    def __init__(self, rows: list[Any], rowcount: int, description: Any) -> None:
        self._rows, self.rowcount, self.description = rows, rowcount, description

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class SerialConnection(sqlite3.Connection):
    """The connection the daemon's threads share, one statement at a time.

    CPython's sqlite3 prepares a statement with the GIL released and the
    connection's mutex held, and the authorizer (Python) then needs the GIL;
    binding parameters and reading columns take that mutex with the GIL held.
    Two threads using the connection at once (the audit writer and a request,
    the drift worker, the federation agent) can so deadlock for good.  Every
    statement therefore runs, with its whole result read, under one lock,
    whose waiters release the GIL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.serial = threading.RLock()

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        with self.serial:
            cursor = super().execute(sql, parameters)
            return _Result(cursor.fetchall(), cursor.rowcount, cursor.description)


class Catalog:
    """Opened without a key, the catalog can be read (keys status, doctor)
    but not written; authenticate() checks it under the master key and
    allows writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counter_path = path.with_name(COUNTER_NAME)
        self._key: CatalogKey | None = None
        self._writable: frozenset[str] | None = None    # tables the open write may touch
        self._migrating = False
        self._adopting = False
        # One connection is shared by the daemon's threads (requests, the
        # audit writer): transactions and checks take turns.
        self._lock = threading.RLock()
        try:
            _private_file(path)
            # No statement cache: the authorizer runs when a statement is
            # prepared, so every statement must be prepared afresh.
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                      timeout=30.0, cached_statements=0,
                                      factory=SerialConnection)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA secure_delete=ON")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.set_authorizer(self._authorize)
            self._migrate()
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the catalog: {exc.strerror}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: cannot open the catalog: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _authorize(self, action: int, table: str | None, *_: object) -> int:
        """Writes go only to the tables the open transaction declared (and
        only with the key), so none escapes the authentication."""
        if action in _WRITES and table and not table.startswith("sqlite_") \
                and not self._migrating \
                and (self._writable is None or table not in self._writable):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _migrate(self) -> None:
        self._migrating = True
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                current = self.schema_version
                for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                    for statement in filter(str.strip, script.split(";")):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {number}")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        finally:
            self._migrating = False

    # ---- authentication ------------------------------------------------------

    def tables(self) -> list[str]:
        """The authenticated tables, as the schema has them now."""
        names = [r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        return [n for n in names if n != AUTH_TABLE and n not in UNAUTHENTICATED]

    def _digests(self, names: list[str] | set[str] | frozenset[str]) -> dict[str, str]:
        existing = set(self.tables())
        return {n: auth.table_digest(self.db, n) if n in existing else auth.MISSING
                for n in names}

    def _head(self) -> Head | None:
        row = self.db.execute(f"SELECT kek_id, counter, prev, tables, mac FROM {AUTH_TABLE} "
                              "WHERE id=1").fetchone()
        return None if row is None else Head.from_row(row)

    def authenticate(self, key: CatalogKey, adopt: bool = False) -> None:
        """Checks every authenticated table against the head, and the head
        against catalog.counter, under `key`; IntegrityError names the table
        at fault.  With adopt (a new store, or a catalog made before
        authentication existed) a catalog without a head is trusted as it is
        and authenticated from now on."""
        with self._lock, auth.counter_lock(self.counter_path, exclusive=False):
            self.db.execute("BEGIN")        # one snapshot for the head and the rows
            try:
                head = self._head()
                if head is not None:
                    auth.check_head(head, key)
                    copy = auth.read_counter(self.counter_path, key)
                    auth.check_against_copy(head, copy, self._digests(
                        set(copy.tables) if copy is not None else set()))
                    names = set(self.tables()) | head.tables.keys()
                    auth.check_tables(head, self._digests(names))
            finally:
                self.db.execute("COMMIT")
        if head is None and not adopt:
            raise auth.tampered(AUTH_TABLE, "the authentication head is missing (deleted, "
                                "or the catalog was replaced)")
        self._key = key
        if head is None:
            self._adopting = True
            try:
                with self.transaction():
                    pass
            finally:
                self._adopting = False

    def check(self, *tables: str) -> None:
        """Checks `tables` against the head now (what a reader about to trust
        them calls: an edit made while the store is open is refused here,
        not only at the next open)."""
        key = self._key
        if key is None:
            raise FailedPrecondition("the catalog is checked only with the master key")
        with self._lock:
            self.db.execute("BEGIN")
            try:
                head = self._head()
                if head is None:
                    raise auth.tampered(AUTH_TABLE, "the authentication head was deleted")
                auth.check_head(head, key)
                auth.check_tables(head, self._digests(set(tables)))
            finally:
                self.db.execute("COMMIT")

    @contextlib.contextmanager
    def transaction(self, *tables: str, rekey: CatalogKey | None = None
                    ) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception.

        `tables` names what the transaction writes (none: any table, at the
        cost of checking them all first); a write elsewhere is refused by
        SQLite.  Before the body runs, those tables are checked against the
        head; after it, the head is raised under the key (or under `rekey`,
        the next master key's, during a rotation)."""
        key = self._key
        if key is None:
            raise FailedPrecondition("the catalog is written only after it is opened with "
                                     "the master key")
        with self._lock:
            if self._writable is not None:
                raise FailedPrecondition("catalog transactions do not nest")
            with auth.counter_lock(self.counter_path, exclusive=True):
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StorageError(f"catalog busy or unwritable: {exc}") from exc
                try:
                    head = self._head()
                    touched = set(tables) if tables else set(self.tables())
                    if head is not None:
                        auth.check_head(head, key)
                        auth.check_tables(head, self._digests(touched))
                    elif not self._adopting:
                        raise auth.tampered(AUTH_TABLE, "the authentication head was deleted")
                    self._writable = frozenset(touched)
                    yield self.db
                    new_key = rekey or key
                    new = auth.next_head(head, new_key, self._digests(touched))
                    self._writable = frozenset({AUTH_TABLE})
                    self.db.execute(f"INSERT OR REPLACE INTO {AUTH_TABLE} VALUES (1,?,?,?,?,?)",
                                    new.row())
                    if rekey is not None:
                        # The copy under the new key goes first, so whichever key
                        # the store opens with after a crash finds one to check.
                        auth.write_counter(self.counter_path, new, strict=True)
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                finally:
                    self._writable = None
                try:
                    self.db.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                    raise StorageError(f"catalog write failed: {exc}; nothing was changed") \
                        from exc
                self._key = new_key
                auth.write_counter(self.counter_path, new)

    # ---- objects ---------------------------------------------------------------

    def insert(self, row: ObjectRow) -> None:
        with self.transaction("objects") as db:
            db.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?)",
                       (row.id, row.kind, row.name, row.version, row.kek_id, row.wrapped_dek,
                        row.sealed_meta, int(row.has_file), row.created_at))

    def next_version(self, kind: str, name: str) -> int:
        row = self.db.execute("SELECT MAX(version) FROM objects WHERE kind=? AND name=?",
                              (kind, name)).fetchone()
        return int(row[0] or 0) + 1

    def get(self, kind: str, name: str, version: int | None = None) -> ObjectRow:
        if version is None:
            row = self.db.execute("SELECT * FROM objects WHERE kind=? AND name=? "
                                  "ORDER BY version DESC LIMIT 1", (kind, name)).fetchone()
        else:
            row = self.db.execute("SELECT * FROM objects WHERE kind=? AND name=? AND version=?",
                                  (kind, name, version)).fetchone()
        if row is None:
            which = f"{name} version {version}" if version is not None else name
            raise NotFound(f"no {kind} {which} in the store")
        return _row(row)

    def rows(self, kind: str | None = None) -> list[ObjectRow]:
        sql = "SELECT * FROM objects" + (" WHERE kind=?" if kind else "") + \
            " ORDER BY kind, name, version"
        return [_row(r) for r in self.db.execute(sql, (kind,) if kind else ())]

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM objects WHERE has_file=1")}

    def kek_usage(self) -> dict[str, int]:
        usage: dict[str, int] = {}
        for table in ("objects", "audit_subjects"):
            for kek_id, count in self.db.execute(
                    f"SELECT kek_id, COUNT(*) FROM {table} GROUP BY kek_id"):
                usage[kek_id] = usage.get(kek_id, 0) + count
        return usage

    @staticmethod
    def now() -> float:
        return time.time()
