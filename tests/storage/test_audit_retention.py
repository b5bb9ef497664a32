"""Audit retention: records older than `[audit] retention_days` are
crypto-shredded (their day keys destroyed) and the chain still verifies."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.storage.audit import DAY_S, AuditLog, epoch_end, epoch_of
from runtime.storage.audit_verify import verify_audit
from runtime.storage.store import SealedStore
from tests.storage.test_audit import KEY, event

NOW = 1_796_000_000.0          # a fixed "now" (2026-11-30), the fake clock's base


@pytest.fixture
def store(tmp_path: Path) -> SealedStore:
    s = SealedStore.init(tmp_path / "state", KEY)
    yield s
    s.close()


def backdated_log(store: SealedStore, days_ago: list[float]) -> AuditLog:
    """Request records made `days_ago` days before NOW (through the log's
    clock), then one made now."""
    log = AuditLog(store)
    clock = [NOW - days_ago[0] * DAY_S]
    log.clock = lambda: clock[0]
    log.start()
    for i, ago in enumerate(days_ago):
        clock[0] = NOW - ago * DAY_S
        log.record(event(i))
        deadline = time.monotonic() + 10
        while log.lag_s and time.monotonic() < deadline:   # one record per day: written now
            time.sleep(0.01)
        assert not log.lag_s
    clock[0] = NOW
    log.record(event(99))
    log.close()
    return log


def test_epochs_are_utc_days() -> None:
    assert epoch_of(0.0) == "epoch-19700101"
    assert epoch_end("epoch-19700101") == DAY_S
    assert epoch_of(DAY_S - 0.001) == "epoch-19700101" and epoch_of(DAY_S) == "epoch-19700102"


def test_old_records_are_shredded_and_the_chain_still_verifies(store: SealedStore) -> None:
    """Records 400, 300 and 200 days old go; 100 days old and today's stay;
    `hearth audit verify` (verify_audit with the store) passes before and
    after.  Checked that it can fail: with prune's cutoff test inverted the
    old records still decrypt; deleting the inner day-key sealing (records
    under the log key only) leaves nothing to shred and the first assertion
    on `pruned.epochs` fails."""
    log = backdated_log(store, [400, 300, 200, 100])
    before = verify_audit(store.state_dir, store=store)
    assert before.broken is None
    assert [e["request_id"] for e in log.entries()] == ["req-0", "req-1", "req-2", "req-3",
                                                        "req-99"]
    pruned = log.prune(183, now=NOW)
    assert len(pruned.epochs) == 3 and pruned.cutoff == NOW - 183 * DAY_S
    kept = [e for e in log.entries() if e["type"] == "request"]
    assert [e["request_id"] for e in kept] == ["req-3", "req-99"]
    gone = [e for e in log.entries(shredded=True) if e.get("shredded")]
    assert len(gone) == 3 and all(e["ts"] < pruned.cutoff for e in gone)
    after = verify_audit(store.state_dir, store=store)
    assert after.broken is None and after.records > before.records
    # the run itself is recorded, and says what went
    runs = [e for e in log.entries() if e.get("action") == "audit.retention"]
    assert runs and runs[-1]["shredded_days"] == list(pruned.epochs)
    # a second run finds nothing more
    assert log.prune(183, now=NOW).epochs == ()
    # the ciphertext of the shredded records is still there: only keys went
    raw = (store.state_dir / "audit" / "log.jsonl").read_text().splitlines()
    assert len(raw) == after.records


def test_shredded_records_stay_shredded_after_a_reopen(store: SealedStore) -> None:
    """The keys are gone from the catalog, not only from the process's cache."""
    backdated_log(store, [300]).prune(183, now=NOW)
    state = store.state_dir
    store.close()
    reopened = SealedStore.open(state, KEY)
    try:
        ids = [e.get("request_id") for e in AuditLog(reopened).entries()]
        assert "req-0" not in ids and "req-99" in ids
        assert reopened.catalog.db.execute(
            "SELECT COUNT(*) FROM audit_subjects WHERE id=?", (epoch_of(NOW - 300 * DAY_S),)
        ).fetchone()[0] == 0
    finally:
        reopened.close()


def test_the_daemon_task_prunes_at_start(store: SealedStore) -> None:
    """runtime/daemon.py's background task runs a prune before its first
    wait.  Checked that it can fail: with the prune call moved after the wait
    nothing is shredded before stop."""
    from runtime.daemon import prune_audit

    log = backdated_log(store, [365])
    log.clock = lambda: NOW

    async def once() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(prune_audit(log, 183, stop, every_s=30.0))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if not any(e.get("request_id") == "req-0" for e in log.entries()):
                break
        stop.set()
        await task

    asyncio.run(once())
    assert [e.get("request_id") for e in log.entries() if e["type"] == "request"] == ["req-99"]
    assert verify_audit(store.state_dir, store=store).broken is None


def test_the_prune_command(store: SealedStore, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """`hearth audit prune --days N` and the config's retention_days; a
    retention below one day is refused."""
    from runtime.cli.main import main

    backdated_log(store, [400, 10])
    state = store.state_dir
    store.close()
    keyfile = tmp_path / "k"
    keyfile.write_bytes(KEY.secret)
    keyfile.chmod(0o600)
    opts = ["--state-dir", str(state), "--key-file", str(keyfile)]
    config = tmp_path / "hearth.toml"
    config.write_text("[audit]\nretention_days = 36500\n")
    assert main(["audit", "prune", "--config", str(config), *opts]) == 0
    assert "nothing older than 36500 days" in capsys.readouterr().out
    assert main(["audit", "prune", *opts]) == 0        # default 183: the 400-day-old record
    assert "crypto-shredded 1 day(s)" in capsys.readouterr().out
    assert main(["audit", "prune", "--days", "0", *opts]) != 0
    assert main(["audit", "verify", *opts]) == 0
    with pytest.raises(ConfigError):
        from runtime.config import parse_config
        parse_config({"audit": {"retention_days": 0}})
