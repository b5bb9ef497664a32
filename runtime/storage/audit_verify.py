"""Checking the audit log (docs/formats/audit-v1.md): the chain, the signed
checkpoints and the catalog's anchor.  The writer is audit.py; this is what
`hearth audit verify` and `hearth doctor` read, and it trusts nothing it
reads (verify_audit names the signing key by its fingerprint)."""
from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import ConfigError, IntegrityError, NotFound
from runtime.storage.catalog import Catalog
from runtime.storage.keys import key_fingerprint, normal_fingerprint
from runtime.storage.store import Kind, SealedStore

LOG_NAME = "log.jsonl"
PUBKEY_NAME = "signing.pub"
GENESIS = b"\0" * 32
_DOMAIN = b"hearth-audit-v1"
_SIGNED = b"hearth-audit-checkpoint-v1"
_ANCHOR = b"hearth-audit-anchor-v1"


def chain_hash(prev: bytes, seq: int, ts: float, rtype: str, ct: bytes) -> bytes:
    """hash = SHA-256(domain || seq || ts || type || prev || ciphertext)."""
    h = hashlib.sha256(_DOMAIN)
    h.update(struct.pack(">Qd", seq, ts))
    h.update(rtype.encode() + b"\0")
    h.update(prev)
    h.update(ct)
    return h.digest()


@dataclass(frozen=True)
class Line:
    seq: int
    ts: float
    type: str           # genesis | request | checkpoint
    ct: bytes
    prev: bytes
    hash: bytes

    def encode(self) -> bytes:
        return (json.dumps({"seq": self.seq, "ts": self.ts, "type": self.type,
                            "ct": base64.b64encode(self.ct).decode(), "prev": self.prev.hex(),
                            "hash": self.hash.hex()}, separators=(",", ":")) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes, number: int) -> Line:
        try:
            d = json.loads(raw)
            return cls(int(d["seq"]), float(d["ts"]), str(d["type"]),
                       base64.b64decode(d["ct"], validate=True), bytes.fromhex(d["prev"]),
                       bytes.fromhex(d["hash"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"audit log line {number}: not a valid record") from exc


@dataclass(frozen=True)
class Break:
    """The first place where the log stops being trustworthy."""

    seq: int
    line: int
    reason: str

    def __str__(self) -> str:
        if self.line == 0:          # about the log as a whole, not one record
            return self.reason
        return f"record {self.seq} (line {self.line}): {self.reason}"


def anchor_message(seq: int, head: bytes, log_size: int) -> bytes:
    """What the anchor's signature covers."""
    return _ANCHOR + struct.pack(">Q", seq) + head + struct.pack(">Q", log_size)


@dataclass(frozen=True)
class Anchor:
    """The catalog's record of where the log ends (table audit_state)."""

    seq: int
    head: bytes
    log_size: int
    sig: bytes | None

    @classmethod
    def read(cls, catalog: Catalog) -> Anchor | None:
        row = catalog.db.execute("SELECT seq, head, log_size, sig FROM audit_state WHERE id=1"
                                 ).fetchone()
        return None if row is None else cls(int(row[0]), bytes(row[1]), int(row[2]),
                                            None if row[3] is None else bytes(row[3]))

    def signed_by(self, public: Ed25519PublicKey) -> bool:
        if self.sig is None:
            return False
        try:
            public.verify(self.sig, anchor_message(self.seq, self.head, self.log_size))
        except InvalidSignature:
            return False
        return True


def verify_lines(path: Path, public_key: Ed25519PublicKey | None,
                 anchor: tuple[int, bytes] | None) -> tuple[int, bytes, Break | None]:
    """Checks the chain, the checkpoint signatures and the anchor without
    any secret key; returns (last seq, head hash, first break or None)."""
    prev, seq = GENESIS, 0
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return 0, GENESIS, (Break(1, 1, "the audit log is missing") if anchor and anchor[0]
                            else None)
    with f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                return seq, prev, Break(seq + 1, number, "the last record is cut off")
            try:
                line = Line.decode(raw, number)
            except IntegrityError as exc:
                return seq, prev, Break(seq + 1, number, str(exc))
            if line.seq != seq + 1:
                what = "deleted" if line.seq > seq + 1 else "repeated or reordered"
                return seq, prev, Break(seq + 1, number, f"sequence jumps from {seq} to "
                                        f"{line.seq}: records were {what}")
            if line.prev != prev:
                return seq, prev, Break(line.seq, number, "its link to the previous record "
                                        "does not match: a record before it was changed")
            if chain_hash(prev, line.seq, line.ts, line.type, line.ct) != line.hash:
                return seq, prev, Break(line.seq, number, "its hash does not match its "
                                        "content: the record was edited")
            if line.type == "checkpoint" and public_key is not None:
                signed = json.loads(line.ct)
                try:
                    public_key.verify(base64.b64decode(signed["sig"]), _SIGNED + struct.pack(
                        ">Q", signed["seq"]) + bytes.fromhex(signed["head"]))
                except (InvalidSignature, KeyError, ValueError):
                    return seq, prev, Break(line.seq, number, "the checkpoint signature is "
                                            "invalid")
                if signed["seq"] != seq or bytes.fromhex(signed["head"]) != prev:
                    return seq, prev, Break(line.seq, number, "the checkpoint signs another "
                                            "head than the chain's")
            seq, prev = line.seq, line.hash
    if anchor is not None and (seq, prev) != anchor:
        if seq < anchor[0]:
            return seq, prev, Break(seq + 1, seq + 1, f"the log ends at record {seq} but "
                                    f"{anchor[0]} were written: the tail was cut off")
        return seq, prev, Break(seq, seq, "the log does not end where the catalog's anchor "
                                "says it does")
    return seq, prev, None


def read_anchor(directory: Path) -> Anchor | None:
    """The anchor as the state directory's catalog holds it (no key)."""
    catalog = Catalog(directory / "catalog.sqlite")
    try:
        return Anchor.read(catalog)
    finally:
        catalog.close()


def verify_state_dir(directory: Path) -> tuple[int, Break | None, bool]:
    """A health check for `hearth doctor`, without any key or fingerprint:
    the chain, the checkpoints under whatever signing.pub holds, and the
    anchor as found: (records, first break or None, whether signatures were
    checked).  `hearth audit verify` is verify_audit, which trusts none of it."""
    audit_dir = directory / "audit"
    pem = audit_dir / PUBKEY_NAME
    key = serialization.load_pem_public_key(pem.read_bytes()) if pem.exists() else None
    public = key if isinstance(key, Ed25519PublicKey) else None
    anchor = read_anchor(directory)
    seq, _, broken = verify_lines(audit_dir / LOG_NAME, public,
                                  None if anchor is None else (anchor.seq, anchor.head))
    return seq, broken, public is not None


@dataclass(frozen=True)
class Verdict:
    records: int
    broken: Break | None
    fingerprint: str            # of the signing key everything was checked under


def _whole(reason: str) -> Break:
    return Break(0, 0, reason)


def verify_audit(directory: Path, fingerprint: str | None = None,
                 store: SealedStore | None = None) -> Verdict:
    """`hearth audit verify` (SECURITY-CASES 30).  The signing key must be
    named: by the sealed store (given the master key; the store's catalog was
    authenticated when it opened, so its anchor is trusted as well) or by
    `fingerprint`.  signing.pub must be that key, every checkpoint and the
    anchor must be signed by it, and the log must reach the anchor; a
    missing log, key or anchor is a break, never a pass."""
    audit_dir = directory / "audit"
    trusted = normal_fingerprint(fingerprint) if fingerprint else None
    if store is not None:
        try:
            signer = Ed25519PrivateKey.from_private_bytes(store.read_bytes(Kind.KEY,
                                                                           "audit-signing"))
        except NotFound:
            raise NotFound("this store has no audit log (no audit signing key)") from None
        sealed = key_fingerprint(signer.public_key())
        if trusted is not None and trusted != sealed:
            raise IntegrityError(f"the store's audit signing key is {sealed}, not the "
                                 f"--fingerprint given ({trusted})")
        trusted = sealed
    if trusted is None:
        raise ConfigError("hearth audit verify needs the audit signing key: give the master "
                          "key (--key-file, --passphrase-file, --credential), or "
                          "--fingerprint HEX as printed by a verify with the key")
    try:
        loaded = serialization.load_pem_public_key((audit_dir / PUBKEY_NAME).read_bytes())
    except FileNotFoundError:
        return Verdict(0, _whole(f"{PUBKEY_NAME} is missing: the signatures cannot be checked"),
                       trusted)
    except ValueError:
        return Verdict(0, _whole(f"{PUBKEY_NAME} is not a public key"), trusted)
    if not isinstance(loaded, Ed25519PublicKey) or key_fingerprint(loaded) != trusted:
        actual = key_fingerprint(loaded) if isinstance(loaded, Ed25519PublicKey) else "?"
        return Verdict(0, _whole(f"{PUBKEY_NAME} holds key {actual}, not the trusted "
                                 f"{trusted}: the checkpoints may have been re-signed"),
                       trusted)
    if store is not None:
        anchor = Anchor.read(store.catalog)
    else:
        anchor = read_anchor(directory)
        if anchor is not None and not anchor.signed_by(loaded):
            return Verdict(0, _whole("the catalog's audit anchor is not signed by the audit "
                                     "key (edited, or written before anchors were signed: "
                                     "verify with the master key)"), trusted)
    if anchor is None:
        return Verdict(0, _whole("the catalog holds no anchor for the audit log (deleted?)"),
                       trusted)
    if not (audit_dir / LOG_NAME).exists():
        return Verdict(0, _whole(f"the audit log is missing ({anchor.seq} records were "
                                 "written)"), trusted)
    seq, _, broken = verify_lines(audit_dir / LOG_NAME, loaded, (anchor.seq, anchor.head))
    return Verdict(seq, broken, trusted)
