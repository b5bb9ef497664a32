"""The audit log: sealed, hash-chained, signed, with erasable content.

Spec: docs/formats/audit-v1.md.  One JSON line per record in
state/audit/log.jsonl:

    {"seq": 7, "ts": 1795940000.12, "type": "request", "ct": "<base64>",
     "prev": "<hex>", "hash": "<hex>"}

`ct` is the record sealed under the audit key; `hash` chains it to the one
before, over the ciphertext, so anyone can check the chain without a key.
Every CHECKPOINT_EVERY records (and on close) a checkpoint record carries an
Ed25519 signature of the chain head; the public key sits in
state/audit/signing.pub.  The catalog keeps the head as an anchor, signed
with the same key, so a cut tail is noticed too.

`hearth audit verify` trusts nothing it reads (verify_audit): the signing
key is named by its fingerprint, from the sealed store when the master key
is given (whose catalog, authenticated at open, also vouches for the anchor)
or from the operator; signing.pub must be that key, and the anchor must
carry its signature.

Appends are group-committed: requests only queue a record; a writer thread
seals, chains, writes and fsyncs a batch every COMMIT_INTERVAL_S.  The log
refuses to start on a broken chain until `hearth audit repair`.

Content (prompt and response) is off by default.  When on, it is sealed
inside the record under a key per subject (the client identity or a
request field); `hearth audit erase --subject S` destroys that key, which
crypto-shreds exactly that subject's content and leaves the chain intact.

Retention (`[audit] retention_days`): every record is sealed a second time,
inside, under a key per UTC day (its epoch, wrapped in the catalog like a
subject's key); `prune` destroys the keys of days wholly older than the
retention, which crypto-shreds those records and leaves the chain, which
covers only ciphertext, verifying.  The daemon prunes at start and hourly;
`hearth audit prune` does it by hand.
"""
from __future__ import annotations

import base64
import calendar
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runtime.errors import FailedPrecondition, IntegrityError, NotFound
from runtime.events import RequestFinished
from runtime.storage.audit_verify import (
    _SIGNED,
    GENESIS,
    LOG_NAME,
    PUBKEY_NAME,
    Anchor,
    Break,
    Line,
    anchor_message,
    chain_hash,
    verify_lines,
)
from runtime.storage.failpoints import io_fault
from runtime.storage.fsutil import atomic_write, fsync_dir, private_dir, storage_error
from runtime.storage.keys import key_fingerprint
from runtime.storage.store import Kind, SealedStore

log = logging.getLogger("hearth.audit")

CHECKPOINT_EVERY = 1000
CHECKPOINT_S = 60.0
COMMIT_INTERVAL_S = 0.05
MAX_BACKLOG = 100_000
DAY_S = 86_400
EPOCH_PREFIX = "epoch-"          # catalog ids of day keys, beside subject ids (hex)


def epoch_of(ts: float) -> str:
    """The key epoch of a record made at `ts`: its UTC day."""
    return EPOCH_PREFIX + time.strftime("%Y%m%d", time.gmtime(ts))


def epoch_end(epoch: str) -> float:
    """When the epoch's day ends (UTC): records of it are all older than this."""
    return calendar.timegm(time.strptime(epoch[len(EPOCH_PREFIX):], "%Y%m%d")) + DAY_S


@dataclass(frozen=True)
class Pruned:
    """What a retention run destroyed."""

    epochs: tuple[str, ...]     # the days whose keys were destroyed
    cutoff: float               # records older than this may be gone


class AuditLog:
    def __init__(self, store: SealedStore, content: bool = False) -> None:
        self.store = store
        self.content = content
        self.dir = private_dir(store.state_dir / "audit")
        self.path = self.dir / LOG_NAME
        self._key = self._secret("audit-log", lambda: secrets.token_bytes(32))
        signing = self._secret("audit-signing", lambda: Ed25519PrivateKey.generate()
                               .private_bytes_raw())
        self._signer = Ed25519PrivateKey.from_private_bytes(signing)
        self._write_public_key()
        self._queue: deque[tuple[float, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.seq, self.head = 0, GENESIS
        self.since_checkpoint = 0
        self._last_checkpoint = time.time()
        self.failed: Exception | None = None
        # The time records are stamped with; tests backdate records through it.
        self.clock: Callable[[], float] = time.time
        self._epoch_keys: dict[str, bytes] = {}

    # ---- keys ----------------------------------------------------------------

    def _secret(self, name: str, make: Any) -> bytes:
        try:
            return self.store.read_bytes(Kind.KEY, name)
        except NotFound:
            self.store.put_bytes(Kind.KEY, name, make())
            return self.store.read_bytes(Kind.KEY, name)

    def public_key(self) -> Ed25519PublicKey:
        return self._signer.public_key()

    def fingerprint(self) -> str:
        return key_fingerprint(self.public_key())

    def _write_public_key(self) -> None:
        """signing.pub, for auditors; a missing or replaced one is put back
        (verify_audit would refuse it)."""
        pem = self._signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        target = self.dir / PUBKEY_NAME
        if target.exists() and target.read_bytes() != pem:
            log.warning("%s did not hold the audit signing key; rewritten", target)
        if not target.exists() or target.read_bytes() != pem:
            atomic_write(target, pem)

    def _subject_id(self, subject: str) -> str:
        return hmac.new(self._key, subject.encode(), "sha256").hexdigest()[:32]

    def _subject_key(self, subject_id: str, create: bool) -> bytes | None:
        cat = self.store.catalog
        row = cat.db.execute("SELECT kek_id, wrapped_key FROM audit_subjects WHERE id=?",
                             (subject_id,)).fetchone()
        master = self.store.master
        if row is not None:
            return master.unwrap(row[1], "subject:" + subject_id)
        if not create:
            return None
        key = secrets.token_bytes(32)
        with cat.transaction("audit_subjects") as db:
            db.execute("INSERT INTO audit_subjects VALUES (?,?,?,?)",
                       (subject_id, master.id, master.wrap(key, "subject:" + subject_id),
                        time.time()))
        return key

    def subject_id(self, subject: str) -> str:
        """The keyed id of a subject (the name itself is never stored)."""
        return self._subject_id(subject)

    def content_key(self, subject_id: str, create: bool) -> bytes | None:
        """The subject's erasable key, None once erased (or, without
        `create`, never made).  Whatever else keeps a subject's content seals
        it under this key (drift/retain.py), so erase_subject shreds that too."""
        try:
            return self._subject_key(subject_id, create)
        except Exception:
            if not create:
                raise
            # another thread made it between our read and our insert
            return self._subject_key(subject_id, False)

    # ---- lifecycle -------------------------------------------------------------

    def anchor(self) -> tuple[int, bytes] | None:
        """Where the log ends, by the catalog (authenticated when the store
        opened)."""
        anchor = Anchor.read(self.store.catalog)
        return None if anchor is None else (anchor.seq, anchor.head)

    def verify(self) -> Break | None:
        self.seq, self.head, broken = verify_lines(self.path, self.public_key(), self.anchor())
        return broken

    def _open_chain(self, refusal: str) -> None:
        """Verifies the chain (a broken one is refused with `refusal`) and
        starts it with a genesis record when the log is empty."""
        broken = self.verify()
        if broken is not None:
            raise IntegrityError(f"the audit log is broken at {broken}; {refusal}: run "
                                 "`hearth audit verify`, then `hearth audit repair`")
        if self.seq == 0:
            now = self.clock()
            self._append_now([(now, {"genesis": True, "created": now})], rtype="genesis")

    def start(self) -> None:
        """Checks the whole chain, then starts the writer thread.  A broken
        chain is refused: nothing is appended until `hearth audit repair`."""
        self._open_chain("the daemon will not append to it")
        self._thread = threading.Thread(target=self._run, name="hearth-audit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._thread = None
        if self.since_checkpoint:
            self._append_now([], rtype="checkpoint")

    def repair(self) -> Path:
        """Sets a broken log aside (kept for forensics) and starts a new
        chain whose genesis record names it and where it broke."""
        broken = self.verify()
        if broken is None:
            raise FailedPrecondition("the audit log is intact; nothing to repair")
        aside = self.dir / f"log-broken-{int(time.time())}.jsonl"
        if self.path.exists():
            os.replace(self.path, aside)
        digest = hashlib.sha256(aside.read_bytes()).hexdigest() if aside.exists() else ""
        with self.store.catalog.transaction("audit_state") as db:
            db.execute("DELETE FROM audit_state")
        self.seq, self.head = 0, GENESIS
        self._append_now([(time.time(), {"genesis": True, "repair_of": aside.name,
                                          "broken_at": str(broken), "sha256": digest})],
                         rtype="genesis")
        self._append_now([], rtype="checkpoint")
        return aside

    # ---- appending -------------------------------------------------------------

    def record(self, event: RequestFinished) -> None:
        """Queues a request's record (an event handler on the request path:
        O(1); sealing and writing happen on the writer thread)."""
        entry: dict[str, Any] = asdict(event)
        content = entry.pop("content")
        entry.pop("drift", None)   # per-request drift signals are never persisted
        # The subject is named only inside its own (erasable) content block.
        entry.pop("subject")
        entry["time"] = self.clock()
        if self.content and content is not None:
            entry["_content"] = (event.subject or event.client, tuple(content))
        with self._lock:
            self._queue.append((entry["time"], entry))
        self._wake.set()

    def record_admin(self, action: str, detail: dict[str, Any]) -> None:
        """An operator's action (a federation release applied or rolled
        back), appended now, from whichever process took it: the log's file
        lock orders writers, and each picks up the chain where the last one
        left it."""
        now = self.clock()
        # Under the writers' lock throughout, so that the chain is read and
        # extended whole even while the daemon's writer thread appends.
        with self._writers_lock():
            broken = self.verify()
            if broken is not None:
                raise IntegrityError(f"the audit log is broken at {broken}; `{action}` was not "
                                     "recorded: run `hearth audit verify`, then `hearth audit "
                                     "repair`")
            if self.seq == 0:
                self._append_locked([(now, {"genesis": True, "created": now})], "genesis")
            self._append_locked([(now, {"action": action, "time": now, **detail})], "admin")
            self._append_locked([], "checkpoint")

    @property
    def lag_s(self) -> float:
        """Age of the oldest record not yet on disk."""
        with self._lock:
            return time.time() - self._queue[0][0] if self._queue else 0.0

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            time.sleep(COMMIT_INTERVAL_S)   # let a batch gather: group commit
            self._wake.clear()
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
            try:
                if batch:
                    self._append_now(batch)
                if self.since_checkpoint and time.time() - self._last_checkpoint > CHECKPOINT_S:
                    self._append_now([], rtype="checkpoint")
                self.failed = None
            except Exception as exc:  # keep serving, keep the records, say so
                self.failed = exc
                log.error("audit append failed, will retry: %s", exc)
                with self._lock:
                    self._queue.extendleft(reversed(batch[-MAX_BACKLOG:]))
            if self._stop:
                with self._lock:
                    if not self._queue:
                        return

    def _epoch_key(self, epoch: str, create: bool) -> bytes | None:
        key = self._epoch_keys.get(epoch)
        if key is None:
            key = self._subject_key(epoch, create)
            if key is not None:
                self._epoch_keys[epoch] = key
        return key

    def _seal(self, seq: int, ts: float, entry: dict[str, Any]) -> bytes:
        content = entry.pop("_content", None)
        if content is not None:
            subject, (prompt, response) = content
            sid = self._subject_id(subject)
            key = self._subject_key(sid, create=True)
            assert key is not None
            nonce = secrets.token_bytes(12)
            ct = AESGCM(key).encrypt(nonce, json.dumps({"subject": subject, "prompt": prompt,
                                                        "response": response}).encode(),
                                     struct.pack(">Q", seq) + sid.encode())
            entry["content"] = {"subject_id": sid,
                                "ct": base64.b64encode(nonce + ct).decode()}
        # Inside: under the day's key, which retention destroys.
        epoch = epoch_of(ts)
        day_key = self._epoch_key(epoch, create=True)
        assert day_key is not None
        nonce = secrets.token_bytes(12)
        inner = nonce + AESGCM(day_key).encrypt(nonce, json.dumps(entry).encode(),
                                                struct.pack(">Q", seq) + epoch.encode())
        outer = {"epoch": epoch, "sealed": base64.b64encode(inner).decode()}
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self._key).encrypt(nonce, json.dumps(outer).encode(),
                                                 struct.pack(">Q", seq))

    def _checkpoint(self, signed_seq: int, signed_head: bytes) -> bytes:
        """The body of a checkpoint: the head it vouches for, signed."""
        sig = self._signer.sign(_SIGNED + struct.pack(">Q", signed_seq) + signed_head)
        return json.dumps({"seq": signed_seq, "head": signed_head.hex(),
                           "sig": base64.b64encode(sig).decode()}).encode()

    def _append_now(self, batch: list[tuple[float, dict[str, Any]]], rtype: str = "request"
                    ) -> None:
        with self._writers_lock():
            anchor = self.anchor()
            if anchor is not None and anchor[0] != self.seq:
                # another process (an operator's command) appended meanwhile
                self.seq, self.head = anchor
            self._append_locked(batch, rtype)

    @contextlib.contextmanager
    def _writers_lock(self) -> Iterator[None]:
        fd = os.open(self.dir / "writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _append_locked(self, batch: list[tuple[float, dict[str, Any]]], rtype: str) -> None:
        lines = []
        seq, head, since = self.seq, self.head, self.since_checkpoint

        def add(kind: str, ts: float, ct: bytes) -> None:
            nonlocal head
            line = Line(seq, ts, kind, ct, head, chain_hash(head, seq, ts, kind, ct))
            lines.append(line.encode())
            head = line.hash

        if rtype == "checkpoint":
            batch = []
            seq += 1
            add("checkpoint", self.clock(), self._checkpoint(seq - 1, head))
            since = 0
        for ts, entry in batch:
            seq += 1
            add(rtype, ts, self._seal(seq, ts, dict(entry)))
            since += 1
            if since >= CHECKPOINT_EVERY:
                seq += 1
                add("checkpoint", ts, self._checkpoint(seq - 1, head))
                since = 0
        try:
            io_fault("audit.append")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                data = b"".join(lines)
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(28, "short write")
                os.fsync(fd)
            finally:
                os.close(fd)
            if seq == len(lines):
                fsync_dir(self.dir)
        except OSError as exc:
            self._truncate_to_anchor()
            raise storage_error(exc, "appending to the audit log") from exc
        size = self.path.stat().st_size
        with self.store.catalog.transaction("audit_state") as db:
            db.execute("INSERT OR REPLACE INTO audit_state (id, seq, head, log_size, updated_at, "
                       "sig) VALUES (1, ?, ?, ?, ?, ?)",
                       (seq, head, size, time.time(),
                        self._signer.sign(anchor_message(seq, head, size))))
        self.seq, self.head, self.since_checkpoint = seq, head, since
        if since == 0:
            self._last_checkpoint = time.time()

    def _truncate_to_anchor(self) -> None:
        """A failed append (a full disk) may leave a partial line; cut back to
        what the anchor covers so the chain stays whole."""
        row = self.store.catalog.db.execute("SELECT log_size FROM audit_state WHERE id=1"
                                            ).fetchone()
        with contextlib.suppress(OSError):
            os.truncate(self.path, int(row[0]) if row else 0)

    # ---- reading ---------------------------------------------------------------

    def entries(self, since: float = 0.0, shredded: bool = False
                ) -> Iterator[dict[str, Any]]:
        """Decrypted request records at or after `since`, content included
        where its subject's key still exists.  Records whose day key
        retention destroyed are left out, or with `shredded` given as
        {"seq", "type", "ts", "shredded": True}."""
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                line = Line.decode(raw, number)
                if line.type not in ("request", "admin") or line.ts < since:
                    continue
                entry = self._open_record(line)
                if entry is None:
                    if shredded:
                        yield {"seq": line.seq, "type": line.type, "ts": line.ts,
                               "shredded": True}
                    continue
                entry["seq"] = line.seq
                entry["type"] = line.type
                content = entry.pop("content", None)
                if content is not None:
                    entry["content"] = self._open_content(line.seq, content)
                yield entry

    def _open_record(self, line: Line) -> dict[str, Any] | None:
        """The record's JSON; None when its day key was destroyed."""
        try:
            plain = AESGCM(self._key).decrypt(line.ct[:12], line.ct[12:],
                                              struct.pack(">Q", line.seq))
        except InvalidTag:
            raise IntegrityError(f"audit record {line.seq} does not decrypt") from None
        entry = dict(json.loads(plain))
        epoch = entry.get("epoch")
        if not isinstance(epoch, str) or "sealed" not in entry:
            return entry        # sealed before day keys existed: the log key only
        key = self._epoch_key(epoch, create=False)
        if key is None:
            return None
        inner = base64.b64decode(entry["sealed"])
        try:
            return dict(json.loads(AESGCM(key).decrypt(inner[:12], inner[12:], struct.pack(
                ">Q", line.seq) + epoch.encode())))
        except InvalidTag:
            raise IntegrityError(f"audit record {line.seq} does not decrypt under its day "
                                 "key") from None

    # ---- retention -------------------------------------------------------------

    def prune(self, retention_days: int, now: float | None = None) -> Pruned:
        """Destroys the day keys of every day that ended more than
        `retention_days` ago: its records can never be decrypted again,
        while the chain over their ciphertext still verifies.  A run that
        destroyed keys is itself recorded (an admin record)."""
        cutoff = (self.clock() if now is None else now) - retention_days * DAY_S
        with self._writers_lock():
            rows = self.store.catalog.db.execute(
                "SELECT id FROM audit_subjects WHERE id LIKE ?", (EPOCH_PREFIX + "%",)).fetchall()
            old = sorted(r[0] for r in rows if epoch_end(r[0]) <= cutoff)
            if old:
                with self.store.catalog.transaction("audit_subjects") as db:
                    db.executemany("DELETE FROM audit_subjects WHERE id=?", [(e,) for e in old])
                # Overwrite the keys in the WAL as well, not only in the main file.
                self.store.catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                for epoch in old:
                    self._epoch_keys.pop(epoch, None)
        if old:
            self.record_admin("audit.retention", {"retention_days": retention_days,
                                                  "cutoff": cutoff, "shredded_days": old})
        return Pruned(tuple(old), cutoff)

    def retained_since(self) -> float | None:
        """Start of the oldest day whose key still exists (None: no day keys)."""
        rows = self.store.catalog.db.execute(
            "SELECT id FROM audit_subjects WHERE id LIKE ?", (EPOCH_PREFIX + "%",)).fetchall()
        return min((epoch_end(r[0]) - DAY_S for r in rows), default=None)

    def _open_content(self, seq: int, content: dict[str, str]) -> dict[str, Any] | str:
        sid = content["subject_id"]
        key = self._subject_key(sid, create=False)
        if key is None:
            return "erased"
        raw = base64.b64decode(content["ct"])
        try:
            return dict(json.loads(AESGCM(key).decrypt(raw[:12], raw[12:],
                                                       struct.pack(">Q", seq) + sid.encode())))
        except InvalidTag:
            raise IntegrityError(f"audit record {seq}: its content does not decrypt") from None

    def erase_subject(self, subject: str) -> bool:
        """Destroys the subject's content key; True if there was one."""
        sid = self._subject_id(subject)
        with self.store.catalog.transaction("audit_subjects") as db:
            gone = db.execute("DELETE FROM audit_subjects WHERE id=?", (sid,)).rowcount
        # Overwrite the key in the WAL as well, not only in the main file.
        self.store.catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return bool(gone)
