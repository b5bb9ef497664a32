"""`hearth fed coordinator --serve` as a process: rounds by its policy,
SIGTERM in the middle of a round, a restart, and sites that keep taking
part (`fed participate --forever`) across it.

What must hold (issue 10, "the coordinator service"): SIGTERM exits 0
within a bounded time; the open round is abandoned, not published; the
sites waiting in it are answered, not left hanging; after the restart the
next round has a new number and completes; the published versions are 1,
2 with none twice.  Every wait has a deadline; nothing is timed.

Checked that it can fail, by an edit run and reverted: without
`self.record.last_round = ...; save_coordinator_record(...)` in
CoordinatorRounds.open the stopped service reports last_round 0, and the
restarted one would open round 1 again, which site-0 already answered.
(test_service_rounds.py pins the withdrawal and the crash-recovery in one
process.)
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_federation import Party, federation

pytestmark = pytest.mark.slow
DEADLINE_S = 300.0


def spawn(party: Party, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runtime.cli.main", *args, *party.opts],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def wait_for(log: Path, text: str, proc: subprocess.Popen, count: int = 1) -> None:
    """Until `text` appears `count` times in `log`; fails if the process
    exits first or the deadline passes."""
    deadline = time.monotonic() + DEADLINE_S
    while log.read_text(errors="replace").count(text) < count:
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in: {log.read_text()[-3000:]}"
        time.sleep(0.1)


def stop(proc: subprocess.Popen, log: Path) -> dict:
    """SIGTERM; the exit status must be 0 and come within the deadline."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


def start_coordinator(coordinator: Party, root: Path, name: str
                      ) -> tuple[subprocess.Popen, str, Path]:
    ready, log = root / f"{name}.addr", root / f"{name}.log"
    ready.unlink(missing_ok=True)
    proc = spawn(coordinator, "fed", "coordinator", "--serve", "--config",
                 str(root / "coordinator.toml"), "--listen", "127.0.0.1:0", "--ready-file",
                 str(ready), log=log)
    deadline = time.monotonic() + DEADLINE_S
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return proc, ready.read_text(), log


def test_sigterm_mid_round_then_restart(tmp_path: Path, tiny_model: Path) -> None:
    coordinator, sites = federation(tmp_path, tiny_model, sites=2)
    # a round as soon as the last one ended, at most three a day: the round
    # stopped by SIGTERM, then two that complete (versions 1 and 2)
    (tmp_path / "coordinator.toml").write_text(
        "[coordinator]\nevery_s = 1.0\nmin_interval_s = 0.0\nmax_rounds_per_day = 3\n")

    server, address, clog = start_coordinator(coordinator, tmp_path, "coordinator-1")
    participants = []

    def participate(i: int) -> None:
        log = tmp_path / f"site-{i}.log"
        participants.append((spawn(sites[i], "fed", "participate", "--forever", "--data",
                                   "notes", "--coordinator", address, "--wait", "60",
                                   "--retry", "0.2", log=log), log))

    # Round 1: only site-0 takes part, so the coordinator keeps waiting for
    # site-1's update; it is stopped while it waits.
    participate(0)
    wait_for(clog, "round 1 open", server)
    wait_for(participants[0][1], "round 1: trained on", participants[0][0])
    summary = stop(server, clog)
    assert summary["versions"] == [] and summary["version"] == 0
    assert summary["last_round"] == 1
    assert "round 1 abandoned: the coordinator is stopping; nothing published" in \
        clog.read_text()
    # site-0 was answered (its round ended, or the coordinator went away),
    # and it is still there, asking again
    wait_for(participants[0][1], "asking again", participants[0][0])

    # Restarted on another port: the sites are told where (a kit names one
    # address; here each run binds a free port).
    participants[0][0].send_signal(signal.SIGTERM)
    participants[0][0].communicate(timeout=DEADLINE_S)
    participants.clear()
    server, address, clog = start_coordinator(coordinator, tmp_path, "coordinator-2")
    participate(0)
    participate(1)
    wait_for(clog, "round 2 open", server)
    wait_for(clog, "round 2 closed: release v1", server)
    wait_for(clog, "round 3 closed: release v2", server)
    wait_for(clog, "max_rounds_per_day", server)          # and no fourth round
    summary = stop(server, clog)
    assert summary["versions"] == [1, 2] and summary["last_round"] == 3

    for proc, log in participants:
        wait_for(log, "applied release v2", proc)
        run = stop(proc, log)
        assert run["releases"] == [1, 2] and run["rounds"] == [2, 3], log.read_text()[-3000:]

    status = json.loads(coordinator("fed", "status").stdout)["coordinator"]
    assert status["version"] == 2 and status["rounds"] == 2 and not status["round_open"]
    _no_release_twice(coordinator)


def _no_release_twice(coordinator: Party) -> None:
    from runtime.federation.documents import open_release_file
    from runtime.federation.release import key_fingerprint, open_envelope, parse_manifest
    from runtime.federation.state import coordinator_keys, load_coordinator_record
    from runtime.storage.keys import key_from_file
    from runtime.storage.store import Kind, SealedStore

    state, key = coordinator.opts[1], coordinator.opts[3]
    store = SealedStore.open(Path(state), key_from_file(key))
    try:
        record = load_coordinator_record(store)
        signing, _, release_key = coordinator_keys(store)
        public = signing.public_key()
        versions = []
        for obj in store.list(Kind.RELEASE):
            envelope, _ = open_release_file(
                store.read_bytes(Kind.RELEASE, obj.name, obj.version), release_key)
            versions.append(parse_manifest(open_envelope(
                envelope, {key_fingerprint(public): public}, "release")).version)
        assert sorted(versions) == [1, 2] and record.version == 2
        assert len(record.round_starts) == 3
    finally:
        store.close()
