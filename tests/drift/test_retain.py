"""Traffic kept for training (drift/retain.py): sealed on disk, readable as
the site's `traffic` data set, shredded per subject by `hearth audit erase`
and per day by the retention period, and nothing kept for requests the
drift watch did not sample."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.drift.retain import DAY_S, TrafficRetainer, TrafficStore, retained_prompts
from runtime.errors import NotFound
from runtime.events import RequestFinished, RequestSignals
from runtime.federation.site_training import TRAFFIC, site_data
from runtime.storage.audit import AuditLog
from runtime.storage.keys import KeySource
from runtime.storage.store import SealedStore

KEY = KeySource("key-file", "t", b"k" * 32)
T0 = 1_790_000_000.0      # a fixed clock


@pytest.fixture
def store(tmp_path: Path) -> SealedStore:
    s = SealedStore.init(tmp_path / "state", KEY)
    yield s
    s.close()


def request(prompt: str, subject: str, sampled: bool = True) -> RequestFinished:
    return RequestFinished("r", "tiny", "ipv4:127.0.0.1:1", "generate", "ok", "stop", 3, 4, 0,
                           0, 0, 0, subject=subject, content=(prompt, "the answer"),
                           drift=RequestSignals(2.0, 1.0, None) if sampled else None)


def keep(store: SealedStore, items: list[tuple[str, str]], now: float = T0,
         sampled: bool = True) -> TrafficRetainer:
    r = TrafficRetainer(AuditLog(store), retention_days=30, clock=lambda: now)
    r.start()
    for prompt, subject in items:
        r.on_request(request(prompt, subject, sampled))
    r.close()
    return r


def raw_files(store: SealedStore) -> bytes:
    d = store.state_dir / "traffic"
    return b"".join(p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()) \
        if d.exists() else b""


def test_sampled_prompts_are_kept_sealed_and_form_the_traffic_data_set(
        store: SealedStore) -> None:
    """Positive control for the disk scan: the prompts are kept (readable
    through the keys) but no byte of them is on disk in the clear.  Fails if
    on_request dropped content-bearing sampled events (nothing kept)."""
    prompts = [(f"zebracorn question number {i}", "alice" if i % 2 else "bob")
               for i in range(20)]
    r = keep(store, prompts)
    assert r.kept == 20
    assert retained_prompts(AuditLog(store)) == [p for p, _ in prompts]
    raw = raw_files(store)
    assert raw and b"zebracorn" not in raw and b"alice" not in raw and b"the answer" not in raw
    data = site_data(store, TRAFFIC, None)
    assert len(data.train) == 18 and len(data.heldout) == 2           # every 10th held out
    assert sorted(data.train + data.heldout) == sorted(p for p, _ in prompts)


def test_requests_not_sampled_keep_nothing(store: SealedStore) -> None:
    """Fails without on_request's `event.drift is None` check."""
    keep(store, [("zebracorn unsampled", "alice")], sampled=False)
    assert raw_files(store) == b""
    with pytest.raises(NotFound, match="no retained traffic"):
        site_data(store, TRAFFIC, None)


def test_erasing_a_subject_shreds_its_retained_prompts(store: SealedStore,
                                                       tmp_path: Path) -> None:
    """`hearth audit erase --subject alice` (the CLI, on the same state
    directory): alice's prompts can no longer be read, bob's still can.
    Fails if the records were sealed under a key erase does not destroy
    (checked: with the record key derived from the day's key alone, the
    erased prompts stay readable and this test fails)."""
    keep(store, [("alice asks one", "alice"), ("bob asks two", "bob"),
                 ("alice asks three", "alice"), ("bob asks four", "bob")])
    key_file = tmp_path / "master.key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "runtime.cli.main", "audit", "erase",
                          "--subject", "alice", "--state-dir", str(store.state_dir),
                          "--key-file", str(key_file)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    audit = AuditLog(store)
    assert retained_prompts(audit) == ["bob asks two", "bob asks four"]
    assert TrafficStore(audit).prompts()[1] == 2                     # two records shredded
    data = site_data(store, TRAFFIC, None)
    assert sorted(data.train + data.heldout) == ["bob asks four", "bob asks two"]


def test_days_past_the_retention_period_are_shredded(store: SealedStore) -> None:
    """A day's records go once the day is more than retention_days old: its
    key is destroyed and its file removed; younger days stay.  Fails if
    expire() compared against the wrong end of the period."""
    keep(store, [("old prompt", "alice")], now=T0)
    keep(store, [("newer prompt", "alice")], now=T0 + 5 * DAY_S)
    audit = AuditLog(store)
    traffic = TrafficStore(audit)
    assert traffic.expire(T0 + 29 * DAY_S, retention_days=30) == []
    assert retained_prompts(audit) == ["old prompt", "newer prompt"]
    old_day = traffic.days()[0]
    old_file = traffic.dir / f"{old_day}.jsonl"
    saved = old_file.read_bytes()
    assert traffic.expire(T0 + 31 * DAY_S, retention_days=30) == [old_day]
    assert retained_prompts(audit) == ["newer prompt"] and not old_file.exists()
    # the key is gone, not only the file: a copy of the file reads as shredded
    old_file.write_bytes(saved)
    assert retained_prompts(audit) == ["newer prompt"]
    assert traffic.prompts()[1] == 1


def test_the_retainer_expires_on_start(store: SealedStore) -> None:
    """Fails if the writer thread did not expire before its first wait."""
    keep(store, [("old prompt", "alice")], now=T0)
    keep(store, [("today", "bob")], now=T0 + 40 * DAY_S)     # start() ran expire first
    assert retained_prompts(AuditLog(store)) == ["today"]
