"""The catalog's authentication: table digests, the head, and its copy.

A table's digest is SHA-256 over its rows, each row encoded as its non-NULL
(column, value) pairs and the rows sorted, so the digest depends on the
table's content only (not on row order, and not on a nullable column a
migration added).  The head is

    {"counter": n, "kek_id": id, "prev": hex(previous head's MAC),
     "tables": {table: hex digest}}      (JSON, sorted keys, no spaces)

with mac = HMAC-SHA256(catalog_key, "hearth/catalog-head/v1\\n" || head), where
catalog_key = HKDF-SHA256(master key, info "hearth/catalog-mac/v1").  Every
write raises the counter by one and chains the previous MAC.  The head lives
in the table catalog_auth and, after each commit, in one of two 4 KiB slots
of catalog.counter (slot counter % 2), so a torn write of one slot leaves
the other.  What a copy outside SQLite adds: truncating the WAL rolls the
whole catalog back to an earlier, validly authenticated head; the copy's
higher counter shows it.  Restoring older copies of both files together (an
old state directory) is not detectable without hardware; see
docs/storage.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import IntegrityError, StorageError, WrongKey

log = logging.getLogger("hearth.storage")

AUTH_TABLE = "catalog_auth"
MISSING = "missing"           # the digest of a table that no longer exists
SLOT = 4096
_HEAD = b"hearth/catalog-head/v1\n"
_TABLE = b"hearth/catalog-table/v1\n"
_GENESIS = b"\0" * 32


@dataclass(frozen=True)
class CatalogKey:
    """The catalog's MAC key and the master key it derives from."""

    kek_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class Head:
    kek_id: str
    counter: int
    prev: bytes
    tables: dict[str, str]
    mac: bytes

    def body(self) -> bytes:
        return json.dumps({"counter": self.counter, "kek_id": self.kek_id,
                           "prev": self.prev.hex(), "tables": self.tables},
                          sort_keys=True, separators=(",", ":")).encode()

    def expected_mac(self, key: CatalogKey) -> bytes:
        return hmac.digest(key.key, _HEAD + self.body(), "sha256")

    def row(self) -> tuple[str, int, bytes, str, bytes]:
        return (self.kek_id, self.counter, self.prev,
                json.dumps(self.tables, sort_keys=True), self.mac)

    @classmethod
    def from_row(cls, row: tuple) -> Head:
        try:
            tables = json.loads(row[3])
            if not isinstance(tables, dict):
                raise ValueError("tables")
            return cls(str(row[0]), int(row[1]), bytes(row[2]),
                       {str(k): str(v) for k, v in tables.items()}, bytes(row[4]))
        except (ValueError, TypeError) as exc:
            raise tampered(AUTH_TABLE, "the authentication head is malformed") from exc


def tampered(table: str, why: str) -> IntegrityError:
    return IntegrityError(f"catalog table {table}: {why}; the store will not open (restore "
                          "the state directory from a backup; see docs/storage.md)")


def _encode_row(columns: list[str], values: tuple) -> bytes:
    out = bytearray()
    for name, value in sorted(zip(columns, values, strict=True)):
        if value is None:
            continue
        if isinstance(value, bool | int):
            encoded = b"i" + str(int(value)).encode()
        elif isinstance(value, float):
            encoded = b"f" + value.hex().encode()
        elif isinstance(value, str):
            encoded = b"s" + value.encode()
        else:
            encoded = b"b" + bytes(value)
        for part in (name.encode(), encoded):
            out += struct.pack(">Q", len(part)) + part
    return bytes(out)


def table_digest(db: sqlite3.Connection, table: str) -> str:
    cursor = db.execute(f'SELECT * FROM "{table}"')
    columns = [d[0] for d in cursor.description]
    h = hashlib.sha256(_TABLE + table.encode() + b"\n")
    for encoded in sorted(_encode_row(columns, r) for r in cursor):
        h.update(struct.pack(">Q", len(encoded)) + encoded)
    return h.hexdigest()


def empty_digest(table: str) -> str:
    return hashlib.sha256(_TABLE + table.encode() + b"\n").hexdigest()


def check_head(head: Head, key: CatalogKey) -> None:
    if head.kek_id != key.kek_id:
        raise WrongKey(f"the catalog is authenticated under master key {head.kek_id}, not the "
                       f"one given ({key.kek_id}); a rotation to it may not have finished: "
                       "open the store with that key")
    if not hmac.compare_digest(head.mac, head.expected_mac(key)):
        raise tampered(AUTH_TABLE, "the authentication head was altered")


def check_tables(head: Head, digests: Mapping[str, str]) -> None:
    """Every table in `digests` must match what the head recorded (a table
    the head does not know yet must be empty)."""
    bad = sorted(name for name, digest in digests.items()
                 if digest != head.tables.get(name, empty_digest(name)))
    if bad:
        raise tampered(", ".join(bad), "rows were edited, added, deleted or rolled back "
                       "without the master key")


def check_against_copy(head: Head, copy: Head | None, digests: Mapping[str, str]) -> None:
    """The catalog must not be behind its copy in catalog.counter."""
    if copy is None:
        if head.counter > 1:
            raise tampered(AUTH_TABLE, "its copy in catalog.counter is missing or does not "
                           "verify, so a rollback could not be ruled out")
        return
    if copy.counter > head.counter:
        behind = sorted(n for n, d in digests.items() if d != copy.tables[n]) or [AUTH_TABLE]
        raise tampered(", ".join(behind), f"the catalog was rolled back to write "
                       f"{head.counter}, but catalog.counter records write {copy.counter} (its "
                       "WAL was truncated, or an older catalog put back)")
    if copy.counter == head.counter and not hmac.compare_digest(copy.mac, head.mac):
        raise tampered(AUTH_TABLE, "the head differs from its copy in catalog.counter")


def next_head(prev: Head | None, key: CatalogKey, digests: Mapping[str, str]) -> Head:
    tables = dict(prev.tables) if prev is not None else {}
    tables.update(digests)
    tables = {n: d for n, d in tables.items() if d != MISSING}
    unsigned = Head(key.kek_id, (prev.counter if prev else 0) + 1,
                    prev.mac if prev else _GENESIS, tables, b"")
    return Head(unsigned.kek_id, unsigned.counter, unsigned.prev, tables,
                unsigned.expected_mac(key))


# ---- catalog.counter -------------------------------------------------------------------------

@contextlib.contextmanager
def counter_lock(path: Path, exclusive: bool) -> Iterator[None]:
    """Writers hold it exclusively from BEGIN to the copy's write, so the
    copy follows the commits in order; openers hold it shared while they
    compare the two."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def write_counter(path: Path, head: Head, strict: bool = False) -> None:
    """Writes the head's copy; a failure raises StorageError with strict
    (before a commit), else is logged (after one)."""
    data = json.dumps({"head": json.loads(head.body()), "mac": head.mac.hex()},
                      sort_keys=True).encode()
    assert len(data) < SLOT, "catalog.counter: too many tables for one slot"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, data.ljust(SLOT, b"\0"), (head.counter % 2) * SLOT)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if strict:
            raise StorageError(f"{path}: cannot write: {exc.strerror}") from exc
        # The catalog committed; a copy left one write behind is tolerated
        # (the check is "not behind the copy"), so say so and go on.
        log.warning("catalog.counter not updated (%s); rollback detection resumes with the "
                    "next write", exc.strerror)


def read_counter(path: Path, key: CatalogKey) -> Head | None:
    """The highest head in catalog.counter that verifies under `key`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    best: Head | None = None
    for offset in (0, SLOT):
        try:
            doc = json.loads(data[offset:offset + SLOT].rstrip(b"\0"))
            body = doc["head"]
            head = Head(str(body["kek_id"]), int(body["counter"]), bytes.fromhex(body["prev"]),
                        {str(k): str(v) for k, v in body["tables"].items()},
                        bytes.fromhex(doc["mac"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if head.kek_id == key.kek_id and hmac.compare_digest(head.mac, head.expected_mac(key)) \
                and (best is None or head.counter > best.counter):
            best = head
    return best
