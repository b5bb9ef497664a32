"""The coordinator's rounds, written once for every transport.

`SiteExchange` is what the coordinator needs from the transport that
reaches its sites: announce a plan, gather what the sites sent by a time,
answer a step of the secure-aggregation exchange, and publish a release.
gRPC over mutual TLS (online.GrpcExchange) and files on removable media
(files.FileExchange) implement it.

`CoordinatorRounds` holds the round's steps on the sealed store (open or
resume, take an update, close into a signed and stored release, abandon),
around coordinator.py's I/O-free decisions.  `drive_round` runs one whole
round over an exchange that can wait for the sites (online).  The
air-gapped commands (`hearth fed plan / collect / publish`, files.py) run
the same steps one command at a time, since a courier carries the media
between them; the open round is kept in the store's record meanwhile.
"""
from __future__ import annotations

import enum
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import FailedPrecondition, HearthError
from runtime.federation.coordinator import Published
from runtime.federation.documents import b64, seal_release_file, unb64
from runtime.federation.plan import RoundPlan
from runtime.federation.secagg import SecAggCoordinator
from runtime.federation.state import (
    build_coordinator,
    coordinator_keys,
    finish_interrupted_close,
    load_coordinator_record,
    record_progress,
    save_coordinator_record,
)
from runtime.storage.store import Kind, SealedStore

log = logging.getLogger("hearth.federation")

_ONLINE_ONLY = ("secure aggregation is an exchange between online sites; this transport "
                "cannot carry it")


class Step(enum.Enum):
    """The secure-aggregation exchange, in order (secagg.py)."""

    KEYS = "keys"
    SHARES = "shares"
    MASKED = "masked"
    UNMASK = "unmask"


@dataclass(frozen=True)
class Delivery:
    """A sealed update as it arrived: `sender` is the site the transport
    authenticated (mTLS), None where it cannot (files: the update's own
    signature says who)."""

    blob: bytes
    sender: str | None
    label: str                      # for messages: the site, or the file's name


class SiteExchange(ABC):
    """How the coordinator reaches its sites."""

    secure_aggregation: bool = False

    @abstractmethod
    async def announce_plan(self, plan: RoundPlan, envelope: bytes, sites: set[str]) -> None:
        """Makes the signed plan available to `sites`."""

    @abstractmethod
    async def updates(self, plan: RoundPlan, seconds: float) -> list[Delivery]:
        """The sealed updates that arrived for the plan's round, waiting up to
        `seconds` for every site to send one."""

    @abstractmethod
    async def publish_release(self, published: Published, release_file: bytes) -> None:
        """Makes the signed release file available to the sites."""

    async def round_failed(self, plan: RoundPlan, error: HearthError) -> None:
        """The round ends without a release; sites still waiting are told
        (files: nobody waits)."""
        return None

    async def gather(self, step: Step, seconds: float) -> dict[str, Any]:
        """The sites' messages for one secure-aggregation step, by site."""
        raise FailedPrecondition(_ONLINE_ONLY)

    async def reply(self, step: Step, result: Any, then: set[str] | None = None) -> None:
        """Answers the step's senders with `result`; `then`: the sites the
        next step expects (opened before the answer goes out)."""
        raise FailedPrecondition(_ONLINE_ONLY)


class CoordinatorRounds:
    """The coordinator's rounds on its sealed store, one step at a time."""

    def __init__(self, store: SealedStore) -> None:
        self.store = store
        self.record = load_coordinator_record(store)
        finish_interrupted_close(store, self.record)
        self.c = build_coordinator(store, self.record)

    @property
    def federation(self) -> str:
        return self.record.settings.federation

    def open(self, now: float, resumable: bool) -> tuple[RoundPlan, bytes]:
        """The next round's plan.  `resumable`: kept in the record so later
        commands see the same round (air-gapped), and returned again while
        that round is open."""
        if self.record.open_plan:
            if not resumable:
                raise FailedPrecondition("an air-gapped round is open (`hearth fed plan`); "
                                         "publish it before running online rounds")
            return self.resume()
        envelope = self.c.open_round(now)
        # The round's number is spent before any site sees the plan.
        self.record.last_round = self.c.last_round
        if resumable:
            self.record.open_plan = b64(envelope)
        save_coordinator_record(self.store, self.record)
        assert self.c.current is not None
        return self.c.current.plan, envelope

    def resume(self) -> tuple[RoundPlan, bytes]:
        """The open air-gapped round, with the updates already taken in."""
        if not self.record.open_plan:
            raise FailedPrecondition("no round is open: run `hearth fed plan --out DIR` first")
        envelope = unb64(self.record.open_plan, "open plan")
        plan = self.c.reopen_round(envelope)
        prefix = self._kept_prefix(plan)
        for obj in self.store.list(Kind.UPDATE):
            if obj.name.startswith(prefix):
                self.c.submit_update(self.store.read_bytes(Kind.UPDATE, obj.name, obj.version))
        return plan, envelope

    def _kept_prefix(self, plan: RoundPlan) -> str:
        return f"{self.federation}.r{plan.round}."

    def take_update(self, delivery: Delivery, keep: bool = False) -> str:
        """Checks one sealed update into the open round; `keep`: also sealed
        into the store, for a later command to take in again."""
        site = self.c.submit_update(delivery.blob, delivery.sender)
        if keep:
            assert self.c.current is not None
            self.store.put_bytes(Kind.UPDATE, self._kept_prefix(self.c.current.plan) + site,
                                 delivery.blob)
        return site

    def close(self, now: float, secagg_sum: tuple[np.ndarray, list[str]] | None = None
              ) -> tuple[Published, bytes]:
        """Aggregates, signs, and stores the release; returns it with its
        release file (the adapter inside is encrypted to the sites)."""
        published = self.c.close_round(now, secagg_sum)
        _, _, release_key = coordinator_keys(self.store)
        blob = seal_release_file(published.envelope, published.adapter, release_key)
        self.store.put_bytes(Kind.RELEASE, self.federation, blob)
        record_progress(self.record, self.c)
        self.record.open_plan = ""
        save_coordinator_record(self.store, self.record)
        for r in published.rejected:
            log.warning("round %d: update from %s not counted: %s", self.c.rounds_done, r.site,
                        r.reason)
        return published, blob

    def abandon(self, reason: str) -> None:
        if self.c.current is not None:
            self.c.abandon_round(reason)


async def secure_sum(agg: SecAggCoordinator, sites: SiteExchange, first_s: float,
                     step_s: float) -> tuple[np.ndarray, list[str]]:
    """The coordinator's side of secure aggregation: it routes and counts,
    and learns only the sum."""
    keys = await sites.gather(Step.KEYS, first_s)
    roster = agg.collect_keys(list(keys.values()))
    await sites.reply(Step.KEYS, roster, then={k.site for k in roster})
    inboxes = agg.route(list((await sites.gather(Step.SHARES, step_s)).values()))
    await sites.reply(Step.SHARES, inboxes, then=set(inboxes))
    survivors, dropped = agg.collect_masked(
        list((await sites.gather(Step.MASKED, step_s)).values()))
    await sites.reply(Step.MASKED, (survivors, dropped), then=set(survivors))
    responses = await sites.gather(Step.UNMASK, step_s)
    await sites.reply(Step.UNMASK, None)
    return agg.finish(list(responses.values()))


async def drive_round(rounds: CoordinatorRounds, sites: SiteExchange, step_seconds: float
                      ) -> Published:
    """One round from plan to release over an exchange that waits for the
    sites.  A round that fails publishes nothing and spends no privacy."""
    plan, envelope = rounds.open(time.time(), resumable=False)
    await sites.announce_plan(plan, envelope, set(rounds.c.sites))
    log.info("round %d open: %d sites, secure aggregation %s", plan.round, len(rounds.c.sites),
             plan.secure_aggregation)
    training_s = max(1.0, plan.deadline - time.time())
    try:
        if plan.secure_aggregation:
            assert rounds.c.current is not None and rounds.c.current.secagg is not None
            total = await secure_sum(rounds.c.current.secagg, sites, training_s, step_seconds)
            published, blob = rounds.close(time.time(), total)
        else:
            for d in await sites.updates(plan, training_s):
                try:
                    rounds.take_update(d)
                except HearthError as exc:
                    log.warning("round %d: update from %s refused: %s", plan.round, d.label,
                                exc)
            published, blob = rounds.close(time.time())
    except HearthError as exc:
        log.error("round %d failed, no release: %s", plan.round, exc)
        await sites.round_failed(plan, exc)
        rounds.abandon(str(exc))
        raise
    await sites.publish_release(published, blob)
    log.info("round %d closed: release v%d (%s)", plan.round, published.version,
             ", ".join(f"{k}={v:.4g}" for k, v in published.manifest.metrics.items()))
    return published
