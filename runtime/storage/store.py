"""The sealed store: objects (models, adapters, keys) encrypted at rest.

    state/keyring.json          how to derive the master key, and its check
    state/catalog.sqlite        what is stored, wrapped data keys, sealed metadata
    state/objects/<id>.sealed   one sealed file per object (docs/formats/sealed-v1.md)

Writes go to a temp file, are fsynced, renamed into place and only then
recorded in the catalog, so a crash leaves at most an orphan file, which
the next open removes.  Models are decrypted (every chunk verified) into a
sealed memfd: plaintext never reaches a persistent filesystem.
"""
from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runtime.errors import IntegrityError, InvalidArgument, WrongKey
from runtime.names import check_name
from runtime.storage.catalog import Catalog, ObjectRow
from runtime.storage.failpoints import failpoint
from runtime.storage.fsutil import atomic_file, private_dir
from runtime.storage.keys import Keyring, KeySource, MasterKey, new_kek_entry
from runtime.storage.sealed import Context, SealedReader, SealedWriter, Suite

READ_BLOCK = 1 << 20
Progress = Callable[[int, int], None]   # (done, total) bytes


class Kind(StrEnum):
    """What a stored object is; the catalog and the sealed file's context
    hold the value."""

    MODEL = "model"
    ADAPTER = "adapter"
    DATASET = "dataset"
    KEY = "key"
    FEDERATION = "federation"
    RELEASE = "release"
    UPDATE = "update"
    DRIFT = "drift"         # a model version's drift reference: aggregates only
    ENERGY = "energy"       # energy attribution weights (idle W, J per prefill/decode token)
    EVALUATION = "evaluation"   # the latest result of an evaluation (hearth eval bias)

    @classmethod
    def parse(cls, text: str) -> Kind:
        try:
            return cls(text)
        except ValueError:
            raise InvalidArgument(f"kind: must be one of {', '.join(k.value for k in cls)}, "
                                  f"got {text!r}") from None


# Vets an opened source file before anything is sealed: (fd, path, kind).
SourceCheck = Callable[[int, Path, Kind], None]


@dataclass(frozen=True)
class StoredObject:
    id: str
    kind: str
    name: str
    version: int
    size: int
    sha256: str
    source: str
    created_at: float
    kek_id: str


def _meta_key(dek: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"hearth/catalog-meta/v1").derive(dek)


def seal_meta(dek: bytes, object_id: str, meta: dict) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(_meta_key(dek)).encrypt(nonce, json.dumps(meta).encode(),
                                                  object_id.encode())


def open_meta(dek: bytes, object_id: str, sealed: bytes) -> dict:
    from cryptography.exceptions import InvalidTag

    try:
        raw = AESGCM(_meta_key(dek)).decrypt(sealed[:12], sealed[12:], object_id.encode())
    except (InvalidTag, ValueError):
        raise IntegrityError(f"object {object_id}: its catalog metadata failed "
                             "authentication") from None
    return dict(json.loads(raw))


class SealedStore:
    def __init__(self, state_dir: Path, master: MasterKey, adopt: bool = False) -> None:
        """Opens the catalog and checks its authentication (IntegrityError
        naming the table if a row was edited, deleted or rolled back); with
        adopt, a catalog without authentication is trusted as it is."""
        self.state_dir = state_dir
        self.master = master
        self.objects = private_dir(state_dir / "objects")
        self.catalog = Catalog(state_dir / "catalog.sqlite")
        try:
            self.catalog.authenticate(master.catalog_key(), adopt=adopt)
        except BaseException:
            self.catalog.close()
            raise
        self.recover()

    # ---- opening ---------------------------------------------------------

    @classmethod
    def init(cls, state_dir: Path, source: KeySource) -> SealedStore:
        private_dir(state_dir)
        return cls(state_dir, Keyring(state_dir).init(source), adopt=True)

    @classmethod
    def open(cls, state_dir: Path, source: KeySource) -> SealedStore:
        """A store made before the catalog was authenticated is migrated
        here, once: its catalog is trusted as it is at this first open with
        the key (docs/storage.md)."""
        keyring = Keyring(state_dir)
        master = keyring.unlock(source)
        store = cls(state_dir, master, adopt=master.legacy)
        if master.legacy:
            keyring.mark_authenticated(master)
        store._settle_rotation(keyring)
        return store

    def close(self) -> None:
        self.catalog.close()

    def _settle_rotation(self, keyring: Keyring) -> None:
        """After an interrupted rotation, the keyring lists two master keys.
        Once every object is wrapped under the one in use, the other goes."""
        data = keyring.load()
        usage = self.catalog.kek_usage()
        if len(data["keks"]) > 1 and set(usage) <= {self.master.id}:
            data["keks"] = [e for e in data["keks"] if e["id"] == self.master.id]
            data["active"] = self.master.id
            keyring.save(data)

    def recover(self) -> list[str]:
        """Removes temp files and sealed files no catalog row points to (what
        a crash during an import leaves)."""
        known = self.catalog.ids()
        removed = []
        for entry in os.scandir(self.objects):
            stem = entry.name.removesuffix(".sealed")
            if entry.name.startswith(".tmp-") or (entry.name.endswith(".sealed")
                                                  and stem not in known):
                os.unlink(entry.path)
                removed.append(entry.name)
        return removed

    # ---- keys --------------------------------------------------------------

    def _dek(self, row: ObjectRow) -> bytes:
        if row.kek_id != self.master.id:
            raise WrongKey(f"{row.kind} {row.name} is wrapped under master key {row.kek_id}, "
                           f"not the one given ({self.master.id}); a rotation to it may not "
                           "have finished: open the store with that key")
        return self.master.unwrap(row.wrapped_dek, row.id)

    def describe(self, row: ObjectRow) -> StoredObject:
        meta = open_meta(self._dek(row), row.id, row.sealed_meta)
        return StoredObject(row.id, row.kind, row.name, row.version, int(meta["size"]),
                            str(meta["sha256"]), str(meta.get("source", "")), row.created_at,
                            row.kek_id)

    def list(self, kind: Kind | None = None) -> list[StoredObject]:
        return [self.describe(r) for r in self.catalog.rows(kind)]

    def rotate(self, new_source: KeySource) -> MasterKey:
        """Re-wraps every data key under a new master key, data untouched.

        1. the new key is added to the keyring (both now listed);
        2. one transaction re-wraps every key (all old, or all new);
        3. the old key is dropped from the keyring.
        A kill at any point leaves every object openable with the old or the
        new key, and rotate can simply be run again."""
        keyring = Keyring(self.state_dir)
        data = keyring.load()
        entry, kek = new_kek_entry(new_source)
        new = MasterKey(entry["id"], kek)
        data["keks"].append(entry)
        keyring.save(data)
        failpoint("rotate.after_new_key")
        with self.catalog.transaction("objects", "audit_subjects",
                                      rekey=new.catalog_key()) as db:
            for row in self.catalog.rows():
                dek = self._dek(row)
                db.execute("UPDATE objects SET kek_id=?, wrapped_dek=? WHERE id=?",
                           (new.id, new.wrap(dek, row.id), row.id))
                failpoint("rotate.mid_transaction")
            for sid, kek_id, wrapped in db.execute(
                    "SELECT id, kek_id, wrapped_key FROM audit_subjects").fetchall():
                if kek_id != self.master.id:
                    raise WrongKey(f"audit subject key {sid} is under {kek_id}")
                key = self.master.unwrap(wrapped, "subject:" + sid)
                db.execute("UPDATE audit_subjects SET kek_id=?, wrapped_key=? WHERE id=?",
                           (new.id, new.wrap(key, "subject:" + sid), sid))
        failpoint("rotate.after_rewrap")
        self.master = new
        data = keyring.load()
        data["keks"] = [entry]
        data["active"] = entry["id"]
        keyring.save(data)
        return new

    # ---- writing -------------------------------------------------------------

    def _row(self, kind: Kind, name: str, version: int | None) -> ObjectRow:
        """The row to read, after checking the objects table against the
        catalog's head (so a row deleted or rolled back while the store is
        open is refused, not served)."""
        self.catalog.check("objects")
        return self.catalog.get(kind, name, version)

    def _path(self, object_id: str) -> Path:
        return self.objects / f"{object_id}.sealed"

    def put_stream(self, src: BinaryIO, size: int, kind: Kind, name: str, source: str = "",
                   progress: Progress | None = None, suite: Suite = Suite.AES_256_GCM
                   ) -> StoredObject:
        """Seals `size` bytes read from src as the next version of kind/name."""
        kind = Kind.parse(kind)
        check_name(name, "name")
        version = self.catalog.next_version(kind, name)
        object_id = secrets.token_hex(16)
        dek = secrets.token_bytes(32)
        final = self._path(object_id)
        done = 0
        with atomic_file(final, what=f"sealing {kind} {name}") as out:
            writer = SealedWriter(out, dek, Context(kind.value, name, version), suite)
            while True:
                block = src.read(READ_BLOCK)
                if not block:
                    break
                writer.write(block)
                done += len(block)
                if progress:
                    progress(done, size)
                failpoint("import.mid_write")
            digest = writer.close()
            if done != size:
                raise IntegrityError(f"{source or name}: read {done} bytes, expected {size} "
                                     "(the file changed during the import)")
        failpoint("import.before_catalog")
        meta = {"size": done, "sha256": digest.hex(), "source": source, "suite": suite.name}
        row = ObjectRow(object_id, kind.value, name, version, self.master.id,
                        self.master.wrap(dek, object_id), seal_meta(dek, object_id, meta),
                        True, Catalog.now())
        try:
            self.catalog.insert(row)
        except BaseException:
            with contextlib.suppress(OSError):
                final.unlink()
            raise
        return self.describe(row)

    def put_bytes(self, kind: Kind, name: str, data: bytes) -> StoredObject:
        import io

        return self.put_stream(io.BytesIO(data), len(data), kind, name)

    # ---- reading ---------------------------------------------------------------

    def _reader(self, row: ObjectRow, f: BinaryIO) -> SealedReader:
        size = os.fstat(f.fileno()).st_size
        dek = self._dek(row)
        try:
            return SealedReader(f, size, dek, Context(row.kind, row.name, row.version))
        except WrongKey:
            # The catalog's own key did not open the header: not a key
            # problem, the file was tampered with or replaced.
            raise IntegrityError(f"{row.kind} {row.name} v{row.version}: sealed header "
                                 "authentication failed (the file was tampered with or "
                                 "replaced)") from None

    def _open_file(self, row: ObjectRow) -> BinaryIO:
        try:
            return self._path(row.id).open("rb")
        except FileNotFoundError:
            raise IntegrityError(f"{row.kind} {row.name} v{row.version}: its sealed file "
                                 "is missing") from None

    def _check_digest(self, row: ObjectRow, reader: SealedReader) -> None:
        expected = bytes.fromhex(self.describe(row).sha256)
        if reader.digest is None or not hmac.compare_digest(reader.digest, expected):
            raise IntegrityError(f"{row.kind} {row.name} v{row.version}: the sealed file's "
                                 "digest does not match the catalog (a whole file was "
                                 "swapped)")

    def read_bytes(self, kind: Kind, name: str, version: int | None = None) -> bytes:
        row = self._row(kind, name, version)
        with self._open_file(row) as f:
            reader = self._reader(row, f)
            data = b"".join(reader.chunks())
        self._check_digest(row, reader)
        return data

    def open_memfd(self, kind: Kind, name: str, version: int | None = None,
                   threads: int = 2, progress: Progress | None = None) -> tuple[int, StoredObject]:
        """Decrypts an object into a sealed memfd; every chunk is verified
        before the descriptor is returned.  The caller closes it."""
        row = self._row(kind, name, version)
        obj = self.describe(row)
        fd = os.memfd_create(f"hearth-{kind}-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            with self._open_file(row) as f:
                reader = self._reader(row, f)
                os.ftruncate(fd, reader.plaintext_size)

                def sink(offset: int, data: memoryview) -> None:
                    while data:
                        written = os.pwrite(fd, data, offset)
                        data, offset = data[written:], offset + written

                reader.decrypt_to(sink, threads, None if progress is None else
                                  lambda n: progress(n, reader.plaintext_size))
            self._check_digest(row, reader)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW |
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        return fd, obj

    def verify(self, kind: Kind, name: str, version: int | None = None) -> StoredObject:
        """Decrypts everything and recomputes the plaintext SHA-256."""
        import hashlib

        row = self._row(kind, name, version)
        digest = hashlib.sha256()
        with self._open_file(row) as f:
            reader = self._reader(row, f)
            for chunk in reader.chunks():
                digest.update(chunk)
        reader.verify_digest(digest.digest())
        self._check_digest(row, reader)
        return self.describe(row)

    def import_file(self, path: Path, name: str, kind: Kind = Kind.MODEL,
                    remove_source: bool = False, progress: Progress | None = None,
                    check: SourceCheck | None = None) -> StoredObject:
        """Seals a file.  `check` vets the opened file first (`hearth models
        import` passes the GGUF header check: the store knows no file
        formats).  With remove_source the plaintext file is unlinked
        afterwards (an unlink, not a secure erase: see docs/storage.md)."""
        kind = Kind.parse(kind)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidArgument(f"{path}: cannot open: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as src:
            if check is not None:
                check(fd, path, kind)
            size = os.fstat(fd).st_size
            obj = self.put_stream(src, size, kind, name, source=path.name, progress=progress)
        if remove_source:
            path.unlink()
        return obj
