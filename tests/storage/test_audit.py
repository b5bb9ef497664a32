"""The audit log: chain, signed checkpoints, erasure, and tampering
(SECURITY-CASES 20, 21)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runtime.errors import FailedPrecondition, IntegrityError
from runtime.events import RequestFinished
from runtime.storage import audit as audit_mod
from runtime.storage import failpoints
from runtime.storage.audit import AuditLog
from runtime.storage.audit_verify import chain_hash
from runtime.storage.keys import KeySource
from runtime.storage.store import SealedStore

KEY = KeySource("key-file", "t", b"a" * 32)


def event(i: int, subject: str = "", content: tuple[str, str] | None = None
          ) -> RequestFinished:
    return RequestFinished(f"req-{i}", "tiny", "ipv4:10.0.0.7:4242", "generate", "ok", "length",
                           3, 5, 0, 0.001, 0.01, 0.02, subject=subject, content=content)


@pytest.fixture
def store(tmp_path: Path) -> SealedStore:
    s = SealedStore.init(tmp_path / "state", KEY)
    yield s
    s.close()


def write(store: SealedStore, n: int, content: bool = False) -> AuditLog:
    log = AuditLog(store, content=content)
    log.start()
    for i in range(n):
        subject = "alice" if i % 2 else "bob"
        log.record(event(i, subject, (f"prompt {i}", f"answer {i}")))
    log.close()
    return log


def lines(store: SealedStore) -> list[str]:
    return (store.state_dir / "audit" / "log.jsonl").read_text().splitlines()


def rewrite(store: SealedStore, new_lines: list[str]) -> None:
    (store.state_dir / "audit" / "log.jsonl").write_text("\n".join(new_lines) + "\n")


def test_records_are_sealed_chained_and_signed(store: SealedStore,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_mod, "CHECKPOINT_EVERY", 10)
    log = write(store, 25)
    assert log.verify() is None
    raw = lines(store)
    types = [json.loads(x)["type"] for x in raw]
    assert types[0] == "genesis" and types.count("request") == 25
    assert types.count("checkpoint") == 3          # at 10, 20 and on close
    assert "ipv4:10.0.0.7" not in "".join(raw)     # sealed: no plaintext on disk
    entries = list(log.entries())
    assert [e["request_id"] for e in entries] == [f"req-{i}" for i in range(25)]
    assert "content" not in entries[0]             # content logging is off by default
    assert (store.state_dir / "audit" / "signing.pub").read_bytes().startswith(b"-----BEGIN")


def test_export_since_filters_by_time(store: SealedStore) -> None:
    log = write(store, 3)
    stamps = [e["time"] for e in log.entries()]
    assert len(list(log.entries(since=stamps[1]))) == 2
    assert list(log.entries(since=stamps[-1] + 10)) == []


def test_erasing_a_subject_shreds_exactly_their_content(store: SealedStore) -> None:
    log = write(store, 6, content=True)
    wrapped = store.catalog.db.execute("SELECT wrapped_key FROM audit_subjects WHERE id NOT "
                                       "LIKE 'epoch-%'").fetchall()   # day keys: retention
    assert len(wrapped) == 2
    assert log.erase_subject("alice")
    assert not log.erase_subject("alice")
    entries = list(log.entries())
    alice = [e for e in entries if int(e["request_id"][4:]) % 2]
    bob = [e for e in entries if not int(e["request_id"][4:]) % 2]
    assert all(e["content"] == "erased" for e in alice)
    assert all(e["content"]["prompt"].startswith("prompt") for e in bob)
    assert all("subject" not in e for e in entries)    # only inside the content block
    assert log.verify() is None                         # the chain is untouched
    # The wrapped key is gone from the database files, not merely unlinked.
    on_disk = b"".join(p.read_bytes() for p in store.state_dir.glob("catalog.sqlite*"))
    remaining = {bytes(w[0]) for w in store.catalog.db.execute(
        "SELECT wrapped_key FROM audit_subjects")}
    erased = [bytes(w[0]) for w in wrapped if bytes(w[0]) not in remaining]
    assert len(erased) == 1 and erased[0] not in on_disk


def test_20_an_edited_record_is_the_first_broken_link(store: SealedStore) -> None:
    write(store, 8)
    raw = lines(store)
    rec = json.loads(raw[4])
    rec["ts"] += 1.0
    raw[4] = json.dumps(rec)
    rewrite(store, raw)
    broken = AuditLog(store).verify()
    assert broken is not None and broken.seq == 5 and broken.line == 5
    assert "hash does not match" in broken.reason


def test_20_a_deleted_record_is_reported(store: SealedStore) -> None:
    write(store, 8)
    raw = lines(store)
    del raw[3]
    rewrite(store, raw)
    broken = AuditLog(store).verify()
    assert broken is not None and broken.seq == 4
    assert "sequence jumps from 3 to 5" in broken.reason


def test_20_a_cut_tail_is_reported_against_the_anchor(store: SealedStore) -> None:
    write(store, 8)
    rewrite(store, lines(store)[:-3])
    broken = AuditLog(store).verify()
    assert broken is not None and "the tail was cut off" in broken.reason


def test_20_a_rechained_forgery_fails_the_signatures(store: SealedStore) -> None:
    """Anyone can recompute the hashes; only the signing key makes checkpoints."""
    write(store, 8)
    raw = [json.loads(x) for x in lines(store)]
    raw[3]["ct"] = raw[4]["ct"]                  # replace one record's content
    prev = bytes.fromhex(raw[2]["hash"])
    for rec in raw[3:]:
        ct = __import__("base64").b64decode(rec["ct"])
        rec["prev"] = prev.hex()
        rec["hash"] = chain_hash(prev, rec["seq"], rec["ts"], rec["type"], ct).hex()
        prev = bytes.fromhex(rec["hash"])
    rewrite(store, [json.dumps(r) for r in raw])
    broken = AuditLog(store).verify()
    assert broken is not None and "checkpoint" in broken.reason


def test_20_the_daemon_refuses_a_broken_chain_until_repaired(store: SealedStore) -> None:
    write(store, 4)
    raw = lines(store)
    del raw[2]
    rewrite(store, raw)
    with pytest.raises(IntegrityError, match="hearth audit repair"):
        AuditLog(store).start()
    log = AuditLog(store)
    aside = log.repair()
    assert aside.exists()
    assert log.verify() is None
    genesis = next(log.entries(), None)
    assert genesis is None                        # the new chain holds no requests yet
    with pytest.raises(FailedPrecondition):
        AuditLog(store).repair()
    write(store, 2)
    assert AuditLog(store).verify() is None


def test_21_full_disk_while_appending_keeps_the_chain_whole(store: SealedStore) -> None:
    write(store, 3)
    store.close()
    size = (store.state_dir / "audit" / "log.jsonl").stat().st_size
    code = textwrap.dedent(f"""
        import resource, signal, time
        from pathlib import Path
        from runtime.events import RequestFinished
        from runtime.storage.audit import AuditLog
        from runtime.storage.keys import KeySource
        from runtime.storage.store import SealedStore
        key = KeySource("key-file", "t", b"a" * 32)
        store = SealedStore.open(Path({str(store.state_dir)!r}), key)
        log = AuditLog(store); log.start()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 300}, {size + 300}))
        for i in range(50):
            log.record(RequestFinished(str(i), "m", "c", "generate", "ok", "stop",
                                       1, 1, 0, 0, 0, 0))
        time.sleep(0.5)
        print(type(log.failed).__name__, log.failed)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.startswith("StorageError"), proc.stdout + proc.stderr
    assert "the disk is full" in proc.stdout
    reopened = SealedStore.open(store.state_dir, KEY)
    assert AuditLog(reopened).verify() is None
    reopened.close()


def test_21_appends_are_retried_after_a_full_disk(store: SealedStore) -> None:
    """docs/storage.md: after a full disk "appends are retried".  Two
    appends fail with ENOSPC; the records wait in the queue and all reach the
    log, in order, on one whole chain.  The retry was there but untested at
    e3a5e70; this fails if the writer drops a failed batch (checked by
    replacing the `extendleft` line in AuditLog._run by `pass`: the records were lost)."""
    log = AuditLog(store)
    log.start()
    failpoints.inject_io_faults("audit.append", 2)
    for i in range(3):
        log.record(event(i))
    waited = 0
    while (failpoints._IO_FAULTS["audit.append"] or log.failed is not None) and waited < 600:
        time.sleep(0.1)
        waited += 1
    log.close()
    assert failpoints._IO_FAULTS["audit.append"] == 0 and log.failed is None
    assert [e["request_id"] for e in log.entries()] == ["req-0", "req-1", "req-2"]
    assert log.verify() is None
