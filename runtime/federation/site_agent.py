"""The daemon's side of a joined federation site: it reports drift alarms,
applies new releases by itself and rolls a worse one back.

`hearth serve` builds a SiteAgent when the sealed store holds a joined site
and [federation] asks for one of these (docs/federation.md, "Sites that
apply releases themselves"):

* report_alarms / report_dir: a DriftDetected event on a model that serves
  the federation's base model becomes a signed SiteReport (reports.py):
  the base model's digest, the applied release, the p-values.  A sender
  thread sends it over the site's mTLS channel (Federation.Report), each
  attempt bounded, with backoff between attempts, or, air-gapped, writes a
  `.hreport` file for `hearth fed collect`.  Failures are logged and
  audited; the daemon never waits for them.
* auto_apply: a watcher thread long-polls the coordinator for a release
  above the site's high-water mark, imports it with every check
  (SiteContext.import_release), audits `federation.release_applied` and
  hot-swaps the adapter in process (ModelManager.set_adapter: streams in
  flight finish with the adapter they started with).  A release applied by
  another process (`hearth fed participate`, `import-release`) is swapped
  in the same way.
* automatic rollback: after a swap from release p to v, the prompt NLL of
  live traffic under v is compared with that of the last requests under p
  (ReleaseTrial, judge_release: pure, no I/O).  Worse by more than
  rollback_margin nats: SiteContext.rollback(p), swap back, audit
  `federation.rollback` (reason "automatic"), report ROLLBACK.

The NLLs come from the drift watch's sampled requests (RequestFinished
carries them), so automatic rollback needs [drift] on.  Nothing here
touches the event loop for longer than appending a number to a list.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from runtime import errors
from runtime.config import FederationConfig, ModelConfig
from runtime.events import DriftDetected, EventBus, RequestFinished
from runtime.federation.reports import ReportKind, SiteReport, sign_report, write_report_file
from runtime.federation.state import SiteContext, adapter_name
from runtime.sources import StoredSource

log = logging.getLogger("hearth.federation")

AuditSink = Callable[[str, dict[str, Any]], None]
REPORT_ATTEMPTS = 5
REPORT_TIMEOUT_S = 20.0
SWAP_TIMEOUT_S = 600.0
# Worth another attempt: the coordinator is down, slow or busy.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED}


def backoff_s(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait before attempt `attempt + 1` (doubling, capped)."""
    return min(cap, base * 2.0 ** max(0, attempt))


# ---- decisions (pure) ---------------------------------------------------------------

@dataclass(frozen=True)
class RollbackVerdict:
    from_version: int          # the release under trial
    to_version: int            # the one it replaced
    previous_nll: float        # mean prompt NLL, nats/token, under to_version
    current_nll: float         # the same under from_version
    rollback: bool

    @property
    def reason(self) -> str:
        return (f"automatic: mean prompt NLL {self.current_nll:.4f} under v{self.from_version}"
                f" vs {self.previous_nll:.4f} under v{self.to_version}")


def judge_release(previous: Sequence[float], current: Sequence[float], after: int,
                  margin: float) -> tuple[float, float, bool] | None:
    """(previous mean, current mean, roll back?) once `current` holds `after`
    prompt NLLs, None before.  Without a baseline of `after` NLLs under the
    previous release there is nothing to compare with: never roll back."""
    if len(current) < after or len(previous) < after:
        return None
    prev = math.fsum(previous[-after:]) / after
    cur = math.fsum(current[:after]) / after
    return prev, cur, cur > prev + margin


class ReleaseTrial:
    """The NLLs of the last `after` sampled requests under the release
    served, and, after a swap, those under the new one until judged.
    Thread-safe: observe() runs on the event loop, start() on the watcher."""

    def __init__(self, after: int, margin: float) -> None:
        self.after, self.margin = after, margin
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=after)
        self._baseline: list[float] = []
        self._trial: list[float] | None = None
        self._versions = (0, 0)

    def start(self, previous: int, new: int) -> None:
        """A swap from release `previous` to `new` has just happened."""
        with self._lock:
            self._baseline = list(self._recent) if previous else []
            self._recent.clear()
            self._trial = [] if len(self._baseline) >= self.after else None
            self._versions = (new, previous)
        if self._trial is None and previous:
            log.info("release v%d: no baseline of %d sampled requests under v%d; it will "
                     "not be rolled back automatically", new, self.after, previous)

    def stop(self) -> None:
        """A rollback or another swap ended the trial."""
        with self._lock:
            self._trial = None
            self._recent.clear()

    def observe(self, nll: float) -> RollbackVerdict | None:
        with self._lock:
            self._recent.append(nll)
            if self._trial is None:
                return None
            self._trial.append(nll)
            judged = judge_release(self._baseline, self._trial, self.after, self.margin)
            if judged is None:
                return None
            self._trial = None
            new, previous = self._versions
            return RollbackVerdict(new, previous, judged[0], judged[1], judged[2])


def alarm_report(site: SiteContext, event: DriftDetected, now: float) -> SiteReport:
    """What a site tells its coordinator about an alarm: no data, only the
    model, the release served and each signal's p-value."""
    p_values = {name: min(1.0, max(0.0, p)) for name, (_, p) in event.signals.items()
                if math.isfinite(p)}
    return SiteReport(site.kit.federation, site.record.site, ReportKind.DRIFT_ALARM,
                      site.base_model_sha256, site.record.applied_version, now, p_values,
                      detail=f"{event.version}: {event.window} requests in the window")


def federation_models(cfg: FederationConfig, models: Sequence[ModelConfig],
                      base_model_path: str) -> list[str]:
    """The daemon's models that serve the federation's base model: the one
    [federation] model names, else those loaded from the base model's file."""
    names = [m.name for m in models]
    if cfg.model:
        if cfg.model not in names:
            raise errors.ConfigError(f"federation.model: the daemon serves no model "
                                     f"{cfg.model!r}")
        return [cfg.model]
    base = os.path.realpath(base_model_path)
    found = [m.name for m in models if m.path and os.path.realpath(m.path) == base]
    if not found:
        raise errors.ConfigError(f"federation: no model served is the base model "
                                 f"{base_model_path}; name it with federation.model")
    return found


# ---- sending reports ----------------------------------------------------------------

def send_report(site: SiteContext, envelope: bytes, address: str | None,
                timeout_s: float = REPORT_TIMEOUT_S) -> None:
    """One attempt: Federation.Report over the site's mTLS channel."""
    from runtime.federation.online_site import GrpcLink

    link = GrpcLink(site, address or None, wait_s=timeout_s)
    try:
        link.report(envelope, timeout_s)
    finally:
        link.close()


class ReportSender:
    """A thread that delivers signed reports: a file in `report_dir`, or
    Federation.Report with up to REPORT_ATTEMPTS bounded attempts."""

    def __init__(self, open_site: Callable[[], SiteContext], cfg: FederationConfig,
                 audit: AuditSink | None, stopping: threading.Event,
                 send: Callable[[SiteContext, bytes, str | None], None] = send_report
                 ) -> None:
        self.open_site, self.cfg, self.audit = open_site, cfg, audit
        self._send = send
        self._stopping = stopping
        self._queue: queue.Queue[SiteReport | None] = queue.Queue(64)
        self._thread = threading.Thread(target=self._run, name="hearth-fed-reports",
                                        daemon=True)
        self.delivered: list[SiteReport] = []

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(timeout=REPORT_TIMEOUT_S + 5)

    def submit(self, report: SiteReport) -> None:
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            log.warning("federation: report queue full; %s report dropped", report.kind.value)

    def _run(self) -> None:
        while (report := self._queue.get()) is not None:
            try:
                self._deliver(report)
            except Exception:      # a report must never take the daemon down
                log.exception("federation: %s report failed", report.kind.value)

    def _deliver(self, report: SiteReport) -> None:
        site = self.open_site()
        detail: dict[str, Any] = {"federation": report.federation, "kind": report.kind.value,
                                  "adapter_version": report.adapter_version,
                                  "p_values": report.p_values}
        if self.cfg.report_dir:
            path = write_report_file(Path(self.cfg.report_dir), report, site.signing_key)
            log.info("federation: %s report written to %s", report.kind.value, path)
            self._record("federation.report_written", {**detail, "file": str(path)})
            self.delivered.append(report)
            return
        envelope = sign_report(report, site.signing_key)
        last = ""
        for attempt in range(REPORT_ATTEMPTS):
            try:
                self._send(site, envelope, self.cfg.coordinator or None)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                last = f"{code}: {exc.details() if hasattr(exc, 'details') else exc}"
                if code not in _TRANSIENT:
                    break
                log.info("federation: report attempt %d failed (%s)", attempt + 1, last)
                if self._stopping.wait(backoff_s(attempt)):
                    break
                continue
            except errors.HearthError as exc:
                last = str(exc)
                break
            log.info("federation: %s report sent to the coordinator", report.kind.value)
            self._record("federation.report_sent", detail)
            self.delivered.append(report)
            return
        log.warning("federation: %s report not delivered: %s", report.kind.value, last)
        self._record("federation.report_failed", {**detail, "error": last})

    def _record(self, action: str, detail: dict[str, Any]) -> None:
        if self.audit is None:
            return
        try:
            self.audit(action, detail)
        except Exception:
            log.exception("federation: %s could not be audited", action)


# ---- the agent ----------------------------------------------------------------------

class SiteAgent:
    """Reports, auto-apply and automatic rollback for one daemon.

    `swap(model, adapter, source, version)` is a coroutine function that
    hot-swaps an adapter (ModelManager.set_adapter); `reset_drift(version)` starts a new
    drift reference for a model@adapter after a swap (the new release's own).
    """

    def __init__(self, cfg: FederationConfig, store: Any, models: list[str],
                 events: EventBus, swap: Callable[..., Any],
                 audit: AuditSink | None = None,
                 reset_drift: Callable[[str], Any] | None = None,
                 send: Callable[[SiteContext, bytes, str | None], None] = send_report
                 ) -> None:
        self.cfg, self.store, self.models = cfg, store, models
        site = self.open_site()          # refuses a store without a joined site
        self.federation = site.kit.federation
        self.adapter = cfg.adapter or adapter_name(self.federation)
        self.audit = audit
        self._swap_fn, self._reset_drift = swap, reset_drift
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._apply_lock = threading.Lock()
        self.served: int | None = None           # the release swapped in, None: not yet
        self.trial = ReleaseTrial(cfg.rollback_after, cfg.rollback_margin)
        self.rollbacks: list[RollbackVerdict] = []
        self.sender = ReportSender(self.open_site, cfg, audit, self._stopping, send) \
            if cfg.report_alarms or cfg.report_dir else None
        self._link: Any = None
        self._link_lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="hearth-fed-releases",
                                         daemon=True) if cfg.auto_apply else None
        events.subscribe(self.on_drift, DriftDetected)
        events.subscribe(self.on_request, RequestFinished)

    def open_site(self) -> SiteContext:
        """A fresh view of the site's sealed record (other processes, such as
        `hearth fed participate`, may have applied a release meanwhile)."""
        return SiteContext.open(self.store)

    # -- lifecycle -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.sender is not None:
            self.sender.start()
        if self._watcher is not None:
            self._watcher.start()
        log.info("federation %s: site agent for %s (alarms %s, auto_apply %s)",
                 self.federation, ", ".join(self.models),
                 "file" if self.cfg.report_dir else "on" if self.cfg.report_alarms else "off",
                 "on" if self.cfg.auto_apply else "off")

    def close(self) -> None:
        self._stopping.set()
        with self._link_lock:
            if self._link is not None:
                self._link.close()          # ends a long poll in flight
                self._link = None
        if self._watcher is not None and self._watcher.is_alive():
            self._watcher.join(timeout=30)
        if self.sender is not None:
            self.sender.close()

    # -- the event loop: quick --------------------------------------------------
    def on_drift(self, event: DriftDetected) -> None:
        if self.sender is None or event.model not in self.models:
            return
        try:
            report = alarm_report(self.open_site(), event, time.time())
        except errors.HearthError as exc:
            log.warning("federation: no alarm report: %s", exc)
            return
        self.sender.submit(report)

    def on_request(self, event: RequestFinished) -> None:
        if event.model not in self.models or event.adapter != self.adapter \
                or event.status != "ok" or event.drift is None \
                or event.drift.prompt_nll is None:
            return
        verdict = self.trial.observe(event.drift.prompt_nll)
        if verdict is None:
            return
        if not verdict.rollback:
            log.info("release v%d kept: %s", verdict.from_version, verdict.reason)
            return
        log.warning("release v%d is worse on live traffic: rolling back (%s)",
                    verdict.from_version, verdict.reason)
        threading.Thread(target=self._roll_back_safely, args=(verdict,),
                         name="hearth-fed-rollback", daemon=True).start()

    # -- swaps (off the loop) -----------------------------------------------------
    def _swap(self, version: int) -> None:
        assert self._loop is not None
        for model in self.models:
            fut = asyncio.run_coroutine_threadsafe(
                self._swap_fn(model, self.adapter, StoredSource(adapter_name(self.federation)),
                              version),
                self._loop)
            fut.result(timeout=SWAP_TIMEOUT_S)
            if self._reset_drift is not None:
                # the new release gets its own reference (no monitor yet: it starts with v)
                with contextlib.suppress(errors.NotFound):
                    self._reset_drift(f"{model}@{self.adapter}")
        self.served = version
        log.info("federation %s: release v%d serving as adapter %s of %s", self.federation,
                 version, self.adapter, ", ".join(self.models))

    def _roll_back_safely(self, verdict: RollbackVerdict) -> None:
        try:
            self.roll_back(verdict)
        except Exception:
            log.exception("federation: automatic rollback to v%d failed", verdict.to_version)

    def roll_back(self, verdict: RollbackVerdict) -> None:
        with self._apply_lock:
            site = self.open_site()
            if site.record.applied_version != verdict.from_version:
                return          # something else moved on meanwhile
            manifest = site.rollback(verdict.to_version)
            self._record("federation.rollback", {
                "federation": manifest.federation, "from_version": verdict.from_version,
                "to_version": manifest.version, "high_water": site.record.high_water,
                "adapter_sha256": manifest.adapter_sha256, "reason": "automatic",
                "previous_nll": verdict.previous_nll, "current_nll": verdict.current_nll})
            self.trial.stop()
            self._swap(manifest.version)
            self.rollbacks.append(verdict)
            if self.sender is not None:
                self.sender.submit(SiteReport(
                    site.kit.federation, site.record.site, ReportKind.ROLLBACK,
                    site.base_model_sha256, verdict.from_version, time.time(),
                    detail=verdict.reason))

    # -- the release watcher --------------------------------------------------------
    def _watch(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                self.step()
                attempt = 0
            except errors.Unavailable as exc:      # the model is still loading
                log.debug("federation: %s; trying again", exc)
                self._stopping.wait(1.0)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("federation: release watch: %s (again in %.0f s)", exc,
                            backoff_s(attempt))
                self._stopping.wait(backoff_s(attempt))
                attempt += 1

    def step(self) -> None:
        """One turn of the watcher: bring the daemon to the applied release,
        else wait (one long poll) for a new one and apply it."""
        site = self.open_site()
        applied = site.record.applied_version
        if applied and self.served != applied:
            with self._apply_lock:
                previous = self.served
                self._swap(applied)
            if previous and applied > previous:   # applied by another process: judged too
                self.trial.start(previous, applied)
            return
        blob = self._fetch(site)
        if blob is None or self._stopping.is_set():
            return
        with self._apply_lock:
            site = self.open_site()
            previous = site.record.applied_version
            manifest = site.import_release(blob)
            self._record("federation.release_applied", {
                "federation": manifest.federation, "version": manifest.version,
                "adapter_sha256": manifest.adapter_sha256, "by": "auto_apply"})
            self._swap(manifest.version)
        self.trial.start(previous, manifest.version)

    def _fetch(self, site: SiteContext) -> bytes | None:
        from runtime.federation.online_site import GrpcLink

        with self._link_lock:
            if self._stopping.is_set():
                return None
            if self._link is None:
                self._link = GrpcLink(site, self.cfg.coordinator or None,
                                      wait_s=self.cfg.release_wait_s)
            link = self._link
        try:
            return link.fetch_release(site.record.high_water) or None
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None         # nothing new within one long poll
            if exc.code() == grpc.StatusCode.CANCELLED and self._stopping.is_set():
                return None
            # the watcher backs off (an Unavailable would mean a model still loading)
            raise ConnectionError(f"coordinator: {exc.code()}: {exc.details()}") from None

    def _record(self, action: str, detail: dict[str, Any]) -> None:
        """Audits an action already taken (as `hearth fed import-release`
        does: the store changed first); a failure to record is logged loudly
        and does not leave the daemon serving another release than the
        store's."""
        if self.audit is None:
            return
        try:
            self.audit(action, detail)
        except Exception:
            log.exception("federation: %s (%s) could not be audited", action, detail)
