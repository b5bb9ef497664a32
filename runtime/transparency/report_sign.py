"""Signing and verifying the transparency report (docs/formats/report-v1.md).

The report's key is Ed25519, sealed in the store as `key/report-signing`,
created on first use.  `report.json.sig` holds the base64 signature over
the exact bytes of `report.json`.  The report names its public key and that
key's fingerprint (SHA-256 of the DER SubjectPublicKeyInfo, as everywhere in
Hearth), but a verifier never trusts a key because the report names it: the
key comes from the sealed store (the master key given) or is pinned by the
auditor with `--fingerprint`, as `hearth audit verify` does.  Then the
report must name an audit chain head that the verified log holds: the
report is bound to the log.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import ConfigError, IntegrityError, NotFound
from runtime.storage.audit_verify import LOG_NAME, Line, verify_audit
from runtime.storage.keys import key_fingerprint, normal_fingerprint
from runtime.storage.store import Kind, SealedStore

KEY_NAME = "report-signing"
REPORT = "report.json"
SIGNATURE = "report.json.sig"


def report_signer(store: SealedStore) -> Ed25519PrivateKey:
    """The report signing key, created (and sealed) on first use."""
    try:
        raw = store.read_bytes(Kind.KEY, KEY_NAME)
    except NotFound:
        store.put_bytes(Kind.KEY, KEY_NAME, Ed25519PrivateKey.generate().private_bytes_raw())
        raw = store.read_bytes(Kind.KEY, KEY_NAME)
    return Ed25519PrivateKey.from_private_bytes(raw)


def key_block(public: Ed25519PublicKey) -> dict[str, str]:
    """How the report names its key."""
    return {"algorithm": "Ed25519", "public_key": base64.b64encode(
        public.public_bytes_raw()).decode(), "fingerprint": key_fingerprint(public),
        "signature_file": SIGNATURE}


def encode(doc: dict[str, Any]) -> bytes:
    """report.json's bytes: what is signed, exactly."""
    return (json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    return base64.b64encode(key.sign(data)) + b"\n"


@dataclass(frozen=True)
class ReportVerdict:
    fingerprint: str            # of the key the signature verified under
    audit_seq: int              # the audit record the report is bound to (0: none named)
    audit_records: int          # the verified log's length


def _stored_key(store: SealedStore) -> Ed25519PublicKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(
            store.read_bytes(Kind.KEY, KEY_NAME)).public_key()
    except NotFound:
        raise NotFound("this store has never signed a report (no report signing key)") from None


def verify_report(directory: Path, state_dir: Path, fingerprint: str | None = None,
                  store: SealedStore | None = None) -> ReportVerdict:
    """`hearth report verify`: the signature over report.json's exact bytes
    under a trusted key (the store's, or the one `fingerprint` pins), then
    the audit log of `state_dir` verified under the audit key the signed
    report names, holding the chain head the report names.  Any failure is
    an IntegrityError that says what failed."""
    trusted = normal_fingerprint(fingerprint) if fingerprint else None
    if store is None and trusted is None:
        raise ConfigError("hearth report verify needs the report signing key: give the master "
                          "key (--key-file, --passphrase-file, --credential), or --fingerprint "
                          "HEX as the report generation printed it")
    try:
        data = (directory / REPORT).read_bytes()
        sig = base64.b64decode((directory / SIGNATURE).read_bytes().strip(), validate=True)
    except FileNotFoundError as exc:
        raise IntegrityError(f"{exc.filename}: missing") from None
    except ValueError:
        raise IntegrityError(f"{SIGNATURE}: not a base64 signature") from None
    if store is not None:
        public = _stored_key(store)
        sealed = key_fingerprint(public)
        if trusted is not None and trusted != sealed:
            raise IntegrityError(f"the store's report signing key is {sealed}, not the "
                                 f"--fingerprint given ({trusted})")
        trusted = sealed
    else:
        public = _named_key(data)
        if key_fingerprint(public) != trusted:
            raise IntegrityError(f"{REPORT} names key {key_fingerprint(public)}, not the "
                                 f"trusted {trusted}: signed by someone else, or changed")
    try:
        public.verify(sig, data)
    except InvalidSignature:
        raise IntegrityError(f"{REPORT}: the signature does not verify under key {trusted}: "
                             "the report was changed after it was signed") from None
    doc = json.loads(data)
    if doc.get("schema") != "hearth-report/1":
        raise IntegrityError(f"{REPORT}: schema {doc.get('schema')!r} is not hearth-report/1")
    if doc.get("signing_key", {}).get("fingerprint") != trusted:
        raise IntegrityError(f"{REPORT}: names another signing key than the one it is signed "
                             "with")
    chain = doc.get("audit_chain", {})
    if "seq" not in chain:
        return ReportVerdict(trusted, 0, 0)
    verdict = verify_audit(state_dir, chain["signing_key_fingerprint"], store)
    if verdict.broken is not None:
        raise IntegrityError(f"the audit log does not verify: {verdict.broken}")
    if not _log_has(state_dir / "audit" / LOG_NAME, int(chain["seq"]),
                    bytes.fromhex(chain["head"])):
        raise IntegrityError(f"the audit log has no record {chain['seq']} with hash "
                             f"{chain['head'][:16]}...: the report is not bound to this log")
    return ReportVerdict(trusted, int(chain["seq"]), verdict.records)


def _named_key(data: bytes) -> Ed25519PublicKey:
    try:
        named = json.loads(data)["signing_key"]["public_key"]
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(named, validate=True))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{REPORT}: does not name its signing key ({exc}); changed?"
                             ) from None


def _log_has(path: Path, seq: int, head: bytes) -> bool:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = Line.decode(raw, number)
            if line.seq == seq:
                return line.hash == head
    return False
