"""The catalog: what the store holds, in SQLite (WAL mode), with migrations.

Rows name objects by kind, name and version and point at their sealed file
by a random id, so a user-supplied name never becomes a path.  The data key
is stored wrapped under the master key; the fields that could identify a
licensed model or a data set (size, SHA-256, where it came from) are sealed
under the object's own data key, so a master-key rotation re-wraps keys and
touches nothing else.  Deleted rows are overwritten (secure_delete), which
is what makes `hearth audit erase` a real crypto-shredding.
"""
from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import NotFound, StorageError

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
]


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


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                      timeout=30.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA secure_delete=ON")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: cannot open the catalog: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self.transaction():
            current = self.schema_version
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"catalog busy or unwritable: {exc}") from exc
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise StorageError(f"catalog write failed: {exc}; nothing was changed") from exc

    def insert(self, row: ObjectRow) -> None:
        with self.transaction() as db:
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

    def delete(self, object_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM objects WHERE id=?", (object_id,))

    @staticmethod
    def now() -> float:
        return time.time()
