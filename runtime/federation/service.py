"""`hearth fed coordinator --serve`: the coordinator as a long-running
service (docs/federation.md, "The coordinator as a service").

* `ReportDesk` takes in the sites' signed reports (reports.py), whichever
  transport brought them: the Report call over mutual TLS, or `*.hreport`
  files that `hearth fed collect` reads.  An accepted report is kept in the
  coordinator's sealed record and written to the audit log; the same
  report delivered twice is kept once.
* `serve_forever` runs the gRPC server (serve.py) until `stop` is set
  (SIGTERM, SIGINT), and starts rounds when policy.decide says so: on its
  schedule (waiting, within `window_max_delay_s`, for the time most sites
  are inside the training windows their deferrals told), or when enough
  sites alarmed, and records why (its trigger) in the audit log and in the
  round's release manifest.  A round open when the service
  stops is abandoned: its plan is withdrawn, sites waiting in it are
  answered (FAILED_PRECONDITION, NOT_FOUND, or `finished`), nothing is
  published and no privacy is spent.  Its round number stays spent
  (rounds.CoordinatorRounds.open keeps it before the plan goes out), so
  the next round, after a restart too, has a higher one.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runtime import errors
from runtime.config import CoordinatorConfig
from runtime.federation.documents import unb64
from runtime.federation.online import GrpcExchange
from runtime.federation.policy import DAY_S, Alarm, decide
from runtime.federation.release import MANUAL, RoundTrigger
from runtime.federation.reports import ReportKind, read_report
from runtime.federation.rounds import CoordinatorRounds, drive_round
from runtime.federation.serve import coordinator_server, online_rounds, serving_exchange
from runtime.federation.state import AcceptedReport, CoordinatorRecord, save_coordinator_record
from runtime.storage.audit import AuditLog
from runtime.storage.store import SealedStore

log = logging.getLogger("hearth.federation")

# Kept per site, newest first: one site's flood of reports cannot push
# another site's alarm out of the record.
MAX_REPORTS_PER_SITE = 32
MAX_WAIT_S = 3600.0             # the service decides again at least this often


class ReportDesk:
    """Site reports into the coordinator's record (the same record object
    the rounds save, so neither overwrites the other)."""

    def __init__(self, store: SealedStore, record: CoordinatorRecord, max_age_s: float,
                 on_alarm: Callable[[], None] | None = None) -> None:
        self.store, self.record, self.max_age_s = store, record, max_age_s
        self.on_alarm = on_alarm

    def _site_keys(self) -> dict[str, Ed25519PublicKey]:
        return {name: Ed25519PublicKey.from_public_bytes(unb64(key, "site key"))
                for name, key in self.record.sites.items()}

    def receive(self, envelope: bytes, sender: str | None = None,
                now: float | None = None) -> tuple[AcceptedReport, bool]:
        """Checks and keeps one signed report; `sender`: the site the
        transport authenticated (mTLS), None for files.  Returns it and
        whether it was new (False: the same report again, counted once)."""
        now = time.time() if now is None else now
        s = self.record.settings
        report = read_report(envelope, self._site_keys(), s.federation, s.base_model_sha256,
                             now, self.max_age_s)
        if sender is not None and report.site != sender:
            raise errors.PermissionDenied(f"site report: names site {report.site!r} but site "
                                          f"{sender!r} sent it")
        digest = hashlib.sha256(report.canonical()).hexdigest()
        for kept in self.record.reports:
            if kept.digest == digest:
                return kept, False
        accepted = AcceptedReport(site=report.site, kind=report.kind.value,
                                  raised_at=report.raised_at, received_at=now,
                                  adapter_version=report.adapter_version, digest=digest,
                                  p_values=dict(report.p_values), detail=report.detail)
        horizon = now - self.max_age_s - DAY_S
        same_site = [r for r in self.record.reports if r.site == report.site]
        dropped = {id(r) for r in same_site[:max(0, len(same_site) + 1 -
                                                 MAX_REPORTS_PER_SITE)]}
        self.record.reports = [r for r in self.record.reports
                               if r.received_at > horizon and id(r) not in dropped]
        self.record.reports.append(accepted)
        save_coordinator_record(self.store, self.record)
        detail = {k: v for k, v in asdict(accepted).items() if k != "received_at"}
        AuditLog(self.store).record_admin("federation.site_report",
                                          {"federation": s.federation, **detail})
        if report.kind is ReportKind.ROLLBACK:
            log.warning("site %s rolled back from release v%d by itself: %s", report.site,
                        report.adapter_version, report.detail or "(no reason given)")
        else:
            log.warning("site %s: drift alarm on release v%d (%s)", report.site,
                        report.adapter_version,
                        ", ".join(f"{k} p={v:.3g}" for k, v in sorted(report.p_values.items())))
            if self.on_alarm is not None:
                self.on_alarm()
        return accepted, True

    def alarms(self) -> list[Alarm]:
        """The drift alarms the policy counts; rollbacks never start a round."""
        return [Alarm(r.site, r.raised_at, r.p_values) for r in self.record.reports
                if r.kind == ReportKind.DRIFT_ALARM.value]


def _note_start(steps: CoordinatorRounds, now: float, reason: str,
                trigger: RoundTrigger = MANUAL) -> None:
    """A round start is kept (and audited) before the round opens: a round
    that fails to open counts against the limits too, so it cannot loop."""
    record = steps.record
    recent = [s for s in record.round_starts if now - s < DAY_S]
    record.round_starts = [*recent, now]
    save_coordinator_record(steps.store, record)
    AuditLog(steps.store).record_admin("federation.round_started", {
        "federation": steps.federation, "round": steps.c.next_round(), "reason": reason,
        "trigger": trigger.doc()})


async def _wait(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, seconds),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _one_round(steps: CoordinatorRounds, exchange: GrpcExchange, step_seconds: float,
                     stop: asyncio.Event, trigger: RoundTrigger = MANUAL) -> int | None:
    """Runs a round unless `stop` comes first; the released version, or
    None when the round failed or was abandoned.  `trigger`: why it
    started, for its release's manifest."""
    task = asyncio.ensure_future(drive_round(steps, exchange, step_seconds, trigger))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, errors.HearthError):
            await task
        current = steps.c.current
        if current is not None:
            reason = "the coordinator is stopping"
            await exchange.round_failed(current.plan, errors.FailedPrecondition(reason))
            steps.abandon(reason)
            log.warning("round %d abandoned: the coordinator is stopping; nothing published",
                        current.plan.round)
        await exchange.withdraw_round()
        return None
    try:
        return task.result().version
    except errors.HearthError as exc:   # drive_round abandoned a round that had opened
        log.error("no release this time: %s", exc)
        await exchange.withdraw_round()
        return None


async def serve_forever(store: SealedStore, listen: str, policy: CoordinatorConfig,
                        step_seconds: float, ready_file: str | None, stop: asyncio.Event
                        ) -> dict[str, Any]:
    """Serves until `stop` is set; starts rounds by `policy`."""
    steps = online_rounds(store)
    exchange = serving_exchange(steps)
    wake = asyncio.Event()
    desk = ReportDesk(store, steps.record, policy.report_max_age_s, on_alarm=wake.set)
    started = time.time()
    versions: list[int] = []
    if not (policy.every_s or policy.daily_at or policy.trigger_sites):
        log.warning("no schedule and no drift trigger in [coordinator]: this service takes "
                    "reports and serves releases but starts no round")
    async with coordinator_server(steps, exchange, listen, ready_file, desk.receive) as address:
        said = ""
        while not stop.is_set():
            now = time.time()
            d = decide(policy, now, steps.record.round_starts, desk.alarms(), started,
                       sorted(steps.c.sites), exchange.site_windows)
            if not d.start:
                if d.reason != said:
                    log.info("no round now: %s%s", d.reason, "" if math.isinf(d.wake_at) else
                             f"; next look in {d.wake_at - now:.0f} s")
                    said = d.reason
                wake.clear()
                await _wait(stop, wake, min(d.wake_at - now, MAX_WAIT_S))
                continue
            said = ""
            log.info("starting round %d: %s", steps.c.next_round(), d.reason)
            trigger = d.trigger or MANUAL
            _note_start(steps, now, d.reason, trigger)
            version = await _one_round(steps, exchange, step_seconds, stop, trigger)
            if version is not None:
                versions.append(version)
        await exchange.finish()             # GetPlan waiters: finished
    return {"federation": steps.federation, "address": address, "versions": versions,
            "version": steps.record.version, "last_round": steps.record.last_round,
            "epsilon": steps.c.epsilon()}

