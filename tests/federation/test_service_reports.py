"""The drift trigger end to end in one process: the service (serve_forever)
on a loopback port with mutual TLS, two sites sending signed alarms with
GrpcLink.report.  One site's alarm, even sent twice, starts nothing; the
second site's alarm starts round 1, whose plan the sites then get; a site
cannot send another site's report.

Checked that it can fail, by an edit run and reverted: without
`on_alarm=wake.set` in serve_forever the round starts only at the next
policy look (MAX_WAIT_S later) and the bounded GetPlan fails.  (Distinct
sites are pinned by test_policy.py.)  The round's trigger (the two sites,
their signals) reaches the audit's round_started record and the round
(drive_round, which puts it into the release manifest): without
`trigger` in serve_forever's `_note_start` call the audit says "manual";
without it in `_one_round`'s drive_round call the round gets MANUAL.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from runtime.config import CoordinatorConfig
from runtime.federation import service as service_module
from runtime.federation.enrollment import enroll_site, issue_kit, join_site
from runtime.federation.online_site import GrpcLink
from runtime.federation.plan import read_plan
from runtime.federation.release import MANUAL, RoundTrigger
from runtime.federation.reports import ReportKind, SiteReport, sign_report
from runtime.federation.service import serve_forever
from runtime.federation.state import SiteContext, load_coordinator_record
from runtime.storage.audit import AuditLog
from runtime.storage.store import SealedStore
from tests.federation.test_site_loop import KEY, federation


class Service:
    """serve_forever on its own thread and event loop."""

    def __init__(self, state: Path, policy: CoordinatorConfig, ready: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.summary: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(state, policy, ready))
        self.thread.start()

    def _run(self, state: Path, policy: CoordinatorConfig, ready: Path) -> None:
        store = SealedStore.open(state, KEY)

        async def main() -> dict[str, Any]:
            self.stop = asyncio.Event()
            return await serve_forever(store, "127.0.0.1:0", policy, 30.0, str(ready),
                                       self.stop)
        try:
            self.summary = self.loop.run_until_complete(main())
        except BaseException as exc:        # surfaced by finish()
            self.error = exc
        finally:
            store.close()

    def finish(self) -> dict[str, Any]:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.summary


def alarm(ctx: SiteContext) -> bytes:
    return sign_report(SiteReport(
        federation=ctx.kit.federation, site=ctx.record.site, kind=ReportKind.DRIFT_ALARM,
        base_model_sha256=ctx.base_model_sha256, adapter_version=0, raised_at=time.time(),
        p_values={"prompt_nll": 0.0001}), ctx.signing_key)


def test_two_sites_alarms_start_a_round(tmp_path: Path, tiny_model: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    triggers: list[RoundTrigger] = []
    real_drive = service_module.drive_round

    async def drive(steps: Any, exchange: Any, step_seconds: float,
                    trigger: RoundTrigger = MANUAL) -> Any:
        triggers.append(trigger)
        return await real_drive(steps, exchange, step_seconds, trigger)

    monkeypatch.setattr(service_module, "drive_round", drive)
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=0.0)
    second = SealedStore.init(tmp_path / "site-1", KEY)
    join_site(second, issue_kit(coordinator, enroll_site(second, "ward-1").dumps()).dumps(),
              str(tiny_model))
    coordinator.close()
    first = SealedStore.open(site_dir, KEY)
    ready = tmp_path / "ready"
    service = Service(tmp_path / "coordinator", CoordinatorConfig(
        trigger_sites=2, trigger_window_s=600.0, min_interval_s=0.0), ready)
    links: list[GrpcLink] = []
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and service.thread.is_alive(), service.error
            time.sleep(0.05)
        address = ready.read_text()
        ward0, ward1 = SiteContext.open(first), SiteContext.open(second)
        links = [GrpcLink(ctx, address, wait_s=5.0) for ctx in (ward0, ward1)]

        report0 = alarm(ward0)
        links[0].report(report0)
        links[0].report(report0)                  # again: acknowledged, counted once
        with pytest.raises(grpc.RpcError) as caught:
            links[0].fetch_plan(0)                # no round: the long poll times out
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as caught:
            links[1].report(report0)              # ward-1 sending ward-0's report
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED

        links[1].report(alarm(ward1))             # the second site: the trigger fires
        envelope = links[1].fetch_plan(0)
        assert envelope is not None
        assert read_plan(envelope, ward1.federation_keys()).round == 1
    finally:
        for link in links:
            link.close()
        summary = service.finish()
        first.close()
        second.close()
    assert summary["versions"] == [] and summary["last_round"] == 1   # abandoned at stop
    store = SealedStore.open(tmp_path / "coordinator", KEY)
    try:
        record = load_coordinator_record(store)
        assert sorted(r.site for r in record.reports) == ["ward-0", "ward-1"]
        assert len(record.round_starts) == 1
        (started,) = [e for e in AuditLog(store).entries()
                      if e.get("action") == "federation.round_started"]
        drift = RoundTrigger("drift", ("ward-0", "ward-1"), {"prompt_nll": 0.0001})
        assert started["trigger"] == drift.doc() and triggers == [drift]
    finally:
        store.close()
