"""`hearth audit verify` trusts nothing it reads (SECURITY-CASES 30): the
signing key is named by its fingerprint (from the sealed store, or given),
signing.pub must be that key, and a cut or deleted log is caught against the
authenticated (and signed) anchor; the daemon's open refuses it too.

The attack tests fail on e3a5e70 (checked by running the cut-log and the
deleted-signing.pub attacks with that commit's `hearth audit verify
--state-dir D`: exit 0, "intact", and its SealedStore.open + AuditLog.start
accepted the cut log with the edited anchor; that commit read the key to
check re-signed checkpoints from signing.pub itself, and has no
verify_audit)."""
from __future__ import annotations

import base64
import json
import sqlite3
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.cli.main import main
from runtime.errors import ConfigError, IntegrityError
from runtime.events import RequestFinished
from runtime.exit_codes import ExitCode
from runtime.storage.audit import AuditLog
from runtime.storage.audit_verify import GENESIS, chain_hash, verify_audit
from runtime.storage.keys import KeySource, key_fingerprint
from runtime.storage.store import SealedStore

KEY = KeySource("key-file", "k", b"k" * 32)


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, str]:
    """A state directory with 6 records and the audit key's fingerprint."""
    state = tmp_path / "state"
    store = SealedStore.init(state, KEY)
    log = AuditLog(store)
    log.start()
    for i in range(6):
        log.record(RequestFinished(f"r{i}", "m", "c", "generate", "ok", "stop",
                                   1, 1, 0, 0, 0, 0))
    log.close()
    fp = log.fingerprint()
    store.close()
    return state, fp


def lines(state: Path) -> list[bytes]:
    return (state / "audit" / "log.jsonl").read_bytes().splitlines(keepends=True)


def set_anchor_to(state: Path, kept: list[bytes]) -> None:
    """The attacker's matching anchor edit (they cannot sign it)."""
    last = json.loads(kept[-1]) if kept else None
    db = sqlite3.connect(state / "catalog.sqlite", isolation_level=None)
    if last is None:
        db.execute("DELETE FROM audit_state")
    else:
        db.execute("UPDATE audit_state SET seq=?, head=?, log_size=?",
                   (last["seq"], bytes.fromhex(last["hash"]), sum(map(len, kept))))
    db.close()


def test_the_intact_log_verifies_with_the_key_and_with_its_fingerprint(
        state: tuple[Path, str]) -> None:
    directory, fp = state
    store = SealedStore.open(directory, KEY)
    keyed = verify_audit(directory, store=store)
    store.close()
    assert keyed.broken is None and keyed.fingerprint == fp and keyed.records >= 7
    keyless = verify_audit(directory, fp.upper())
    assert keyless.broken is None and keyless.records == keyed.records


def test_without_the_key_or_a_fingerprint_nothing_is_vouched_for(
        state: tuple[Path, str]) -> None:
    with pytest.raises(ConfigError, match="--fingerprint"):
        verify_audit(state[0])


def test_checkpoints_re_signed_with_another_key_are_refused(state: tuple[Path, str]) -> None:
    """Re-sign every checkpoint with a new key and put its signing.pub in
    place: the chain and signatures are consistent, but under the wrong key."""
    directory, fp = state
    forger = Ed25519PrivateKey.generate()
    prev, out = GENESIS, []
    for raw in lines(directory):
        d = json.loads(raw)
        ct = base64.b64decode(d["ct"])
        if d["type"] == "checkpoint":
            body = json.loads(ct)
            sig = forger.sign(b"hearth-audit-checkpoint-v1" + struct.pack(">Q", body["seq"])
                              + bytes.fromhex(body["head"]))
            body["sig"] = base64.b64encode(sig).decode()
            ct = json.dumps(body).encode()
        h = chain_hash(prev, d["seq"], d["ts"], d["type"], ct)
        d.update(ct=base64.b64encode(ct).decode(), prev=prev.hex(), hash=h.hex())
        out.append((json.dumps(d, separators=(",", ":")) + "\n").encode())
        prev = h
    (directory / "audit" / "log.jsonl").write_bytes(b"".join(out))
    (directory / "audit" / "signing.pub").write_bytes(forger.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    verdict = verify_audit(directory, fp)
    assert verdict.broken is not None and "not the trusted" in str(verdict.broken)
    # naming the forger's key instead is caught by the anchor, which it cannot sign
    forged = verify_audit(directory, key_fingerprint(forger.public_key()))
    assert forged.broken is not None
    store = SealedStore.open(directory, KEY)
    assert verify_audit(directory, store=store).broken is not None
    store.close()


def test_a_deleted_signing_pub_is_refused(state: tuple[Path, str]) -> None:
    directory, fp = state
    (directory / "audit" / "signing.pub").unlink()
    verdict = verify_audit(directory, fp)
    assert verdict.broken is not None and "signing.pub is missing" in str(verdict.broken)


@pytest.mark.parametrize("keep", [3, 0])
def test_a_cut_or_deleted_log_with_a_matching_anchor_is_caught(state: tuple[Path, str],
                                                               keep: int) -> None:
    """keep=3 cuts the tail, keep=0 deletes the log; the anchor row is
    edited to match (or deleted)."""
    directory, fp = state
    kept = lines(directory)[:keep]
    if kept:
        (directory / "audit" / "log.jsonl").write_bytes(b"".join(kept))
    else:
        (directory / "audit" / "log.jsonl").unlink()
    set_anchor_to(directory, kept)
    verdict = verify_audit(directory, fp)
    assert verdict.broken is not None and "anchor" in str(verdict.broken)
    # the daemon's start path opens the store first: the edited anchor is refused
    with pytest.raises(IntegrityError, match="catalog table audit_state"):
        SealedStore.open(directory, KEY)


def test_a_cut_log_alone_stops_the_daemon(state: tuple[Path, str]) -> None:
    directory, _ = state
    (directory / "audit" / "log.jsonl").write_bytes(b"".join(lines(directory)[:3]))
    store = SealedStore.open(directory, KEY)
    with pytest.raises(IntegrityError, match="tail was cut off"):
        AuditLog(store).start()
    store.close()


def test_the_cli_needs_the_key_or_the_fingerprint(state: tuple[Path, str],
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    directory, fp = state
    key_file = tmp_path / "master.key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    verify = ["audit", "verify", "--state-dir", str(directory)]
    assert main(verify) == ExitCode.CONFIG
    assert main([*verify, "--key-file", str(key_file)]) == ExitCode.OK
    assert fp in capsys.readouterr().out
    assert main([*verify, "--fingerprint", fp]) == ExitCode.OK
    (directory / "audit" / "signing.pub").unlink()
    assert main([*verify, "--fingerprint", fp]) == ExitCode.INTEGRITY
