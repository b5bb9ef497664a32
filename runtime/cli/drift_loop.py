"""The federation's half of `hearth drift simulate` (drift_simulate.py is
the harness): a coordinator service whose drift trigger starts a round, the
sites' daemons reporting alarms and applying releases themselves, and the
sites' training processes.

* The coordinator runs `hearth fed coordinator --serve` with a [coordinator]
  policy of a drift trigger only: a round when `trigger_sites` distinct
  sites have alarmed within the hour, no schedule.
* Each site's daemon gets a [federation] table: signed drift alarms to the
  coordinator (report_alarms), auto_apply of new releases (fetched,
  checked, hot-swapped), and [drift] retain_for_training, so that the site
  can train on the traffic it was asked.
* When the coordinator starts a round, each site runs `hearth fed
  participate --data traffic`: it trains on the prompts its daemon kept (the
  shifted traffic included), evaluates the round's candidate on its
  held-out notes for the gate, and leaves once the round has its outcome.

What happened is read from the coordinator's log (rounds started, the
gate's outcome) while it runs and from its sealed record (every gate
decision) after it stops.
"""
from __future__ import annotations

import logging
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import InternalError
from runtime.federation.simulate import Party, last_json

log = logging.getLogger("hearth.drift")

FEDERATION = "drift-sim"
ADAPTER = f"fed-{FEDERATION}"          # state.adapter_name: what requests ask for
ROUND_SECONDS = 900.0                  # a round's training deadline (sites start late)

_STARTED = re.compile(r"starting round (\d+)")
_CLOSED = re.compile(r"round (\d+) closed: release v(\d+)")
_WITHHELD = re.compile(r"round (\d+): candidate withheld by the gate: (.*)")
_FAILED = re.compile(r"round (\d+) (?:failed, no release: |abandoned: )(.*)")


def trigger_sites(sites: int) -> int:
    """Alarmed sites that start a round: all but a third, as rounds tolerate."""
    return max(1, sites - sites // 3)


def init_args(model: str, sites: int) -> list[str]:
    """`hearth fed init` for the loop: the training `hearth fed simulate`
    uses, a deadline long enough for sites that join when the round opens."""
    return ["fed", "init", "--federation", FEDERATION, "--base-model", model,
            "--steps", "30", "--learning-rate", "1e-2", "--batch-tokens", "512",
            "--rank", "8", "--clip-norm", "5.0", "--min-sites", str(trigger_sites(sites)),
            "--round-seconds", str(ROUND_SECONDS)]


def coordinator_toml(sites: int) -> str:
    return ("[coordinator]\n"
            f"trigger_sites = {trigger_sites(sites)}\n"
            "trigger_window_s = 3600.0\n"
            "min_interval_s = 3600.0\n"       # one round per run: the loop, not a storm
            "max_rounds_per_day = 4\n")


def site_toml(coordinator: str, model: str) -> str:
    """The [federation] table of a site's daemon and its [drift] additions."""
    return ("retain_for_training = true\n"     # appended to the [drift] table
            "\n[federation]\n"
            "report_alarms = true\n"
            "auto_apply = true\n"
            f'coordinator = "{coordinator}"\n'
            f'model = "{model}"\n'
            "release_wait_s = 10.0\n")


@dataclass
class RoundEvents:
    """The coordinator's rounds as its log tells them."""

    started: list[int] = field(default_factory=list)
    released: dict[int, int] = field(default_factory=dict)      # round -> version
    withheld: dict[int, str] = field(default_factory=dict)      # round -> reason
    failed: dict[int, str] = field(default_factory=dict)

    def decided(self, round_no: int) -> bool:
        return round_no in self.released or round_no in self.withheld or \
            round_no in self.failed


def read_events(log_text: str) -> RoundEvents:
    ev = RoundEvents()
    for line in log_text.splitlines():
        if m := _STARTED.search(line):
            ev.started.append(int(m.group(1)))
        elif m := _CLOSED.search(line):
            ev.released[int(m.group(1))] = int(m.group(2))
        elif m := _WITHHELD.search(line):
            ev.withheld[int(m.group(1))] = m.group(2).strip()
        elif m := _FAILED.search(line):
            ev.failed[int(m.group(1))] = m.group(2).strip()
    return ev


class CoordinatorService:
    """`hearth fed coordinator --serve` on a loopback port."""

    def __init__(self, party: Party, root: Path, sites: int) -> None:
        self.party = party
        config = root / "coordinator.toml"
        config.write_text(coordinator_toml(sites))
        ready = root / "coordinator.addr"
        self.log_path = root / "logs" / "coordinator.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self.proc = party.start("fed", "coordinator", "--serve", "--listen", "127.0.0.1:0",
                                "--config", str(config), "--ready-file", str(ready),
                                "--step-seconds", "300", log_path=self.log_path)
        deadline = time.monotonic() + 120
        while not ready.exists() or not ready.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise InternalError("coordinator did not start: " + self.log_tail())
            time.sleep(0.05)
        self.address = ready.read_text().strip()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def events(self) -> RoundEvents:
        return read_events(self.log_path.read_text(errors="replace"))

    def stop(self) -> dict[str, Any]:
        """SIGTERM (the service abandons an open round, exits 0); its summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return last_json(out or "")


def gate_decisions(party: Party, events: RoundEvents) -> list[dict[str, Any]]:
    """Every gate decision, from the coordinator's sealed record (read once
    the service has stopped); the log's account where the record keeps none."""
    from runtime.federation.state import load_coordinator_record
    from runtime.storage.keys import key_from_file
    from runtime.storage.store import SealedStore

    store = SealedStore.open(party.dir, key_from_file(str(party.key)))
    try:
        kept = list(getattr(load_coordinator_record(store), "gate", []) or [])
    finally:
        store.close()
    if kept:
        return [{"version": int(g["version"]), "promoted": bool(g["promoted"]),
                 "reason": str(g.get("reason", ""))} for g in kept]
    found = [{"version": v, "promoted": True, "reason": "published (no gate on this coordinator)"}
             for _, v in sorted(events.released.items())]
    found += [{"version": None, "promoted": False, "reason": r}
              for _, r in sorted(events.withheld.items())]
    return found


class Participant:
    """A site's `hearth fed participate` for the round that is open: it
    trains on the traffic its daemon kept."""

    def __init__(self, site: Party, root: Path, coordinator: str, threads: int) -> None:
        self.log_path = root / "logs" / f"{site.name}-participate.log"
        self.proc = site.start("fed", "participate", "--data", "traffic",
                               "--heldout", "heldout", "--coordinator", coordinator,
                               "--threads", str(threads), "--wait", str(ROUND_SECONDS),
                               log_path=self.log_path)

    def stop(self) -> dict[str, Any]:
        """Ends it (a plain participant waits for the next round, which a
        service coordinator may never open); what it reported, if it had."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return last_json(out or "")

    def failed(self) -> str | None:
        code = self.proc.poll()
        if code is None or code == 0:
            return None
        return self.log_path.read_text(errors="replace")[-2000:]


class FederationLoop:
    """The coordinator service and the sites' participants, advanced by the
    harness between requests (`step`), stopped at the end (`stop`)."""

    def __init__(self, coordinator: Party, sites: list[Party], runs: list[Any], root: Path,
                 threads: int) -> None:
        self.service = CoordinatorService(coordinator, root, len(sites))
        self.address = self.service.address
        self.coordinator, self.sites, self.runs = coordinator, sites, runs
        self.root, self.threads = root, threads
        self.participants: dict[str, Participant] = {}
        self.reports: dict[str, dict[str, Any]] = {}

    def step(self, o: Any, traffic: Any) -> bool:
        """Starts the sites' training when a round starts; True once the run
        is over: the round's release is served by every site for
        `o.after_swap` requests, or the gate withheld it, or the round
        failed, or no round came before every site's alarm deadline."""
        if self.service.proc.poll() is not None:
            raise InternalError("the coordinator exited: " + self.service.log_tail())
        ev = self.service.events()
        if ev.started and not self.participants:
            traffic.long_streams.set()
            for site, run in zip(self.sites, self.runs, strict=True):
                with run.lock:
                    run.new_before_training = run.new_sent
                self.participants[site.name] = Participant(site, self.root, self.address,
                                                           self.threads)
        for name, p in self.participants.items():
            if (tail := p.failed()) is not None and name not in self.reports:
                self.reports[name] = {"failed": tail}
                log.warning("%s: fed participate failed: %s", name, tail)
        if not ev.started:
            return all(r.sent >= o.requests_before + o.requests_after for r in self.runs)
        first = ev.started[0]
        if not ev.decided(first):
            return False
        if first in ev.released:
            return all(r.swapped_at is not None and r.sent - r.swapped_at >= o.after_swap
                       for r in self.runs)
        return True

    def stop(self) -> tuple[int, list[dict[str, Any]]]:
        """Stops the participants and the service; (rounds started, the gate's
        decisions)."""
        for name, p in self.participants.items():
            self.reports.setdefault(name, p.stop())
        self.service.stop()
        events = self.service.events()
        return len(events.started), gate_decisions(self.coordinator, events)
