"""The air-gapped transport: files on removable media.

Site side, `FileLink` (a site_loop.CoordinatorLink): the plan file comes
in, the signed, encrypted update file goes out (`hearth fed export-update`);
the release comes back later on other media (`hearth fed import-release`).
Coordinator side, `FileExchange` (a rounds.SiteExchange): the plan goes out
as `plan.json`, update files come in from a directory, the release goes out
as `FEDERATION-vN.hrel`.  The coordinator's commands each run one step of
rounds.CoordinatorRounds: plan opens the round, collect takes updates in,
publish closes it.  Secure aggregation needs the online transport.
Sites' signed reports (drift alarms, rollbacks) travel as `*.hreport`
files too; collect takes them in (`collect_reports`), round or not.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from runtime.errors import HearthError
from runtime.federation.coordinator import Published
from runtime.federation.participant import LocalUpdate
from runtime.federation.plan import NO_FLOOR, RoundPlan, SitePolicy
from runtime.federation.reports import report_files
from runtime.federation.rounds import CoordinatorRounds, Delivery, SiteExchange
from runtime.federation.site_loop import (
    ANY_TIME,
    CoordinatorLink,
    TrainingConditions,
    defer_outside_windows,
    take_part,
)
from runtime.federation.site_training import SiteData
from runtime.federation.state import SiteContext, load_coordinator_record
from runtime.storage.fsutil import atomic_write
from runtime.storage.store import SealedStore

PLAN_FILE = "plan.json"


def private_write(path: Path, data: bytes) -> Path:
    """Files for removable media: written whole (temp + rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return path


# ---- a site -----------------------------------------------------------------------------

class FileLink(CoordinatorLink):
    """One plan in, its update file out into `out_dir`."""

    def __init__(self, plan: bytes, out_dir: Path) -> None:
        self.plan: bytes | None = plan
        self.out_dir = out_dir
        self.written: list[Path] = []
        self.bytes_sent = 0

    def fetch_plan(self, after_round: int) -> bytes | None:
        plan, self.plan = self.plan, None
        return plan

    def submit_update(self, plan: RoundPlan, site: str, sealed_update: bytes) -> None:
        name = f"{plan.federation}-r{plan.round}-{site}.hupd"
        self.written.append(private_write(self.out_dir / name, sealed_update))
        self.bytes_sent += len(sealed_update)

    def fetch_release(self, after_version: int) -> bytes | None:
        return None


def export_update(site: SiteContext, plan_envelope: bytes, data: SiteData, out_dir: Path,
                  policy: SitePolicy = NO_FLOOR, threads: int | None = None,
                  conditions: TrainingConditions = ANY_TIME) -> tuple[Path, LocalUpdate]:
    """`hearth fed export-update`: an update file for the coordinator.
    Outside the site's training windows it writes nothing and refuses
    (FailedPrecondition, saying when the windows open): files have no
    deferral to send, so the coordinator counts the site as late."""
    link = FileLink(plan_envelope, out_dir)
    defer_outside_windows(site, link, plan_envelope, conditions)
    answer = take_part(site, link, plan_envelope, data, policy, threads,
                       meter=conditions.meter)
    return link.written[-1], answer.update


# ---- the coordinator --------------------------------------------------------------------

class FileExchange(SiteExchange):
    """Plan and release files out to directories, update files in from one."""

    def __init__(self, plan_dir: Path | None = None, updates_dir: Path | None = None,
                 release_dir: Path | None = None) -> None:
        self.plan_dir, self.updates_dir, self.release_dir = plan_dir, updates_dir, release_dir
        self.written: list[Path] = []

    async def announce_plan(self, plan: RoundPlan, envelope: bytes, sites: set[str]) -> None:
        if self.plan_dir is not None:
            self.written.append(private_write(self.plan_dir / PLAN_FILE, envelope))

    async def updates(self, plan: RoundPlan, seconds: float) -> list[Delivery]:
        if self.updates_dir is None:
            return []
        return [Delivery(path.read_bytes(), None, path.name)
                for path in sorted(self.updates_dir.glob("*.hupd"))]

    async def publish_release(self, published: Published, release_file: bytes) -> None:
        if self.release_dir is not None:
            name = f"{published.manifest.federation}-v{published.version}.hrel"
            self.written.append(private_write(self.release_dir / name, release_file))


def open_plan(store: SealedStore, out_dir: Path) -> tuple[RoundPlan, Path]:
    """`hearth fed plan`: the open round's plan (opening one when none is),
    kept in the record so that collect and publish, run later, see the same
    round."""
    rounds = CoordinatorRounds(store)
    plan, envelope = rounds.open(time.time(), resumable=True)
    exchange = FileExchange(plan_dir=out_dir)
    asyncio.run(exchange.announce_plan(plan, envelope, set(rounds.c.sites)))
    return plan, exchange.written[-1]


def collect_updates(store: SealedStore, directory: Path) -> tuple[list[str], list[str]]:
    """`hearth fed collect`: (accepted sites, refusals); each file is checked
    now, kept sealed, and checked again at publish."""
    rounds = CoordinatorRounds(store)
    plan, _ = rounds.resume()
    accepted, refused = [], []
    for delivery in asyncio.run(FileExchange(updates_dir=directory).updates(plan, 0.0)):
        try:
            accepted.append(rounds.take_update(delivery, keep=True))
        except HearthError as exc:
            refused.append(f"{delivery.label}: {exc}")
    return accepted, refused


def publish_round(store: SealedStore, out_dir: Path | None) -> tuple[Published, Path | None]:
    """`hearth fed publish`: aggregates the open round and writes the release."""
    rounds = CoordinatorRounds(store)
    rounds.resume()
    published, blob = rounds.close(time.time())
    exchange = FileExchange(release_dir=out_dir)
    asyncio.run(exchange.publish_release(published, blob))
    return published, (exchange.written[-1] if exchange.written else None)


def collect_reports(store: SealedStore, directory: Path, max_age_s: float
                    ) -> tuple[list[str], list[str]]:
    """`hearth fed collect`: the `*.hreport` files in `directory`, each
    checked and kept (service.ReportDesk), whether a round is open or not.
    (accepted: "SITE KIND" per new report, refusals)."""
    from runtime.federation.service import ReportDesk

    desk = ReportDesk(store, load_coordinator_record(store), max_age_s)
    accepted, refused = [], []
    for path in report_files(directory):
        try:
            report, new = desk.receive(path.read_bytes())
        except HearthError as exc:
            refused.append(f"{path.name}: {exc}")
            continue
        if new:
            accepted.append(f"{report.site} {report.kind}")
    return accepted, refused


def has_update_files(directory: Path) -> bool:
    return any(p.is_file() for p in directory.glob("*.hupd"))
