"""The service's round handling in one process (service._one_round over
online.GrpcExchange, the servicer called as the registry would), and the
crash between storing a release and saving the record.

Checked that these can fail, by edits run and reverted: without
`await exchange.withdraw_round()` after the abandon in _one_round, the
site's GetRelease waits on (the bounded wait_for fails) and GetPlan hands
out the abandoned plan again; without the `last_round` kept in
CoordinatorRounds.open, a new CoordinatorRounds opens round 1 again;
without the finish_interrupted_close call in CoordinatorRounds.__init__,
the restarted coordinator signs another version 1 (the store then holds
two).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import errors
from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime.auth import principal
from runtime.auth.principal import Principal
from runtime.federation import rounds as rounds_module
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.online import FederationServicer, GrpcExchange
from runtime.federation.rounds import CoordinatorRounds, Delivery
from runtime.federation.service import _one_round
from runtime.federation.site_loop import accept_site_plan
from runtime.federation.state import SiteContext, load_coordinator_record
from runtime.federation.update_bundle import seal_update
from runtime.storage.store import Kind, SealedStore
from tests.federation.test_site_loop import KEY, federation


class RpcContext:
    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds

    def time_remaining(self) -> float:
        return self.seconds


def update_for(ctx: SiteContext, rounds: CoordinatorRounds, round_no: int) -> bytes:
    n = rounds.c.settings.trainable_size
    vec = np.concatenate([np.full(n, 0.01, np.float32), np.array([5.0, 2.0], np.float32)])
    return seal_update(SiteUpdate("ward-0", vec, 10), "clinics", round_no, ctx.signing_key,
                       ctx.coordinator_exchange())


def test_a_round_stopped_midway_is_withdrawn_and_its_number_not_reused(
        tmp_path: Path, tiny_model: Path) -> None:
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=0.0)
    site = SealedStore.open(site_dir, KEY)
    ctx = SiteContext.open(site)
    rounds = CoordinatorRounds(coordinator)

    async def run() -> None:
        exchange = GrpcExchange()
        servicer = FederationServicer(exchange)
        principal.current.set(Principal("site:ward-0", frozenset()))
        stop = asyncio.Event()
        first = asyncio.ensure_future(_one_round(rounds, exchange, 5.0, stop))
        plan = (await servicer.GetPlan(fpb.GetPlanRequest(after_round=0), RpcContext()))
        assert accept_site_plan(ctx, plan.envelope).round == 1
        # the site has answered, and waits for the release; the service stops
        release = asyncio.ensure_future(
            servicer.GetRelease(fpb.GetReleaseRequest(after_version=0), RpcContext()))
        await asyncio.sleep(0)
        stop.set()
        assert await asyncio.wait_for(first, 30) is None
        with pytest.raises(errors.NotFound):
            await asyncio.wait_for(release, 30)          # answered, not left waiting
        assert rounds.c.current is None and not list(coordinator.list(Kind.RELEASE))
        # the abandoned plan is not handed out again
        with pytest.raises(errors.DeadlineExceeded):
            await servicer.GetPlan(fpb.GetPlanRequest(after_round=0), RpcContext(0.6))

    try:
        asyncio.run(run())
        record = load_coordinator_record(coordinator)
        assert record.last_round == 1 and record.version == 0 and record.rounds_done == 0
        # a restarted coordinator opens round 2, which the site answers too
        again = CoordinatorRounds(coordinator)
        plan, envelope = again.open(time.time(), resumable=False)
        assert plan.round == 2 and accept_site_plan(ctx, envelope).round == 2
        again.take_update(Delivery(update_for(ctx, again, 2), "ward-0", "ward-0"))
        published, _ = again.close(time.time())
        assert published.version == 1 and published.manifest.metrics["round"] == 2.0
    finally:
        site.close()
        coordinator.close()


def test_a_crash_between_storing_the_release_and_saving_the_record(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stored release is the commit point: after the crash the record
    catches up with it, and the next round signs version 2, not a second
    version 1."""
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=0.5)
    site = SealedStore.open(site_dir, KEY)
    ctx = SiteContext.open(site)
    try:
        rounds = CoordinatorRounds(coordinator)
        plan, envelope = rounds.open(time.time(), resumable=False)
        accept_site_plan(ctx, envelope)
        rounds.take_update(Delivery(update_for(ctx, rounds, plan.round), "ward-0", "ward-0"))

        saves = []

        real_save = rounds_module.save_coordinator_record

        def crash(store: SealedStore, record: object) -> None:
            saves.append(record)
            if len(saves) == 1:       # aggregation saves the privacy spent: let it
                real_save(store, record)   # type: ignore[arg-type]
                return
            raise OSError("the machine lost power")

        monkeypatch.setattr(rounds_module, "save_coordinator_record", crash)
        with pytest.raises(OSError):
            rounds.close(time.time())
        monkeypatch.undo()
        assert load_coordinator_record(coordinator).version == 0     # not saved
        spent = list(rounds.c.accountant.rdp)                         # type: ignore[union-attr]
        assert load_coordinator_record(coordinator).rdp == pytest.approx(spent)

        restarted = CoordinatorRounds(coordinator)
        record = load_coordinator_record(coordinator)
        assert (record.version, record.rounds_done, record.last_round) == (1, 1, 1)
        assert record.rdp == pytest.approx(spent)                     # privacy counted once
        assert restarted.c.version == 1
        plan2, envelope2 = restarted.open(time.time(), resumable=False)
        assert plan2.round == 2 and plan2.adapter_version == 1
        ctx.record.applied_version = 1        # as if the site had applied v1
        accept_site_plan(ctx, envelope2)
        restarted.take_update(Delivery(update_for(ctx, restarted, 2), "ward-0", "ward-0"))
        published, _ = restarted.close(time.time())
        assert published.version == 2
        assert [o.version for o in coordinator.list(Kind.RELEASE)] == [1, 2]
    finally:
        site.close()
        coordinator.close()


def test_one_writer_of_the_coordinator_record_at_a_time(tmp_path: Path) -> None:
    """While `fed coordinator` runs (it keeps the record in memory and saves
    it whole), `fed issue` or `collect` would have its change undone by the
    service's next save: they are refused instead.  Fails without the
    LOCK_NB flock in coordinator_writer (the second enters)."""
    from runtime.federation.state import coordinator_writer

    store = SealedStore.init(tmp_path / "coordinator", KEY)
    other = SealedStore.open(tmp_path / "coordinator", KEY)   # another process's view
    try:
        with coordinator_writer(store), \
                pytest.raises(errors.FailedPrecondition, match="stop it first"), \
                coordinator_writer(other):
            pass
        with coordinator_writer(other):                  # free again
            pass
    finally:
        other.close()
        store.close()
