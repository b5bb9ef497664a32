"""The coordinator's rounds, written once for every transport.

`SiteExchange` is what the coordinator needs from the transport that
reaches its sites: announce a plan, gather what the sites sent by a time,
answer a step of the secure-aggregation exchange, and publish a release.
gRPC over mutual TLS (online.GrpcExchange) and files on removable media
(files.FileExchange) implement it.

`CoordinatorRounds` holds the round's steps on the sealed store (open or
resume, take an update, aggregate into a candidate, put it through the gate
(gate.py) and promote it into a signed and stored release or withhold it
with a signed rejection record, abandon), around coordinator.py's and
gate.py's I/O-free decisions.  `drive_round` runs one whole round over an
exchange that can wait for the sites (online): plan, updates, candidate,
the sites' evaluations, the gate, the release.  The air-gapped commands
(`hearth fed plan / collect / publish`, files.py) run the same steps one
command at a time, since a courier carries the media between them; the
open round is kept in the store's record meanwhile.  They have no candidate
round trip: `publish` releases without the gate, and says so.
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
from runtime.federation.coordinator import Candidate, Published, Withheld
from runtime.federation.documents import b64, seal_release_file, unb64
from runtime.federation.gate import (
    CandidateManifest,
    GateDecision,
    SiteFigures,
    decide,
    read_evaluation,
    rejection_text,
    seal_candidate_file,
    sign_rejection,
)
from runtime.federation.plan import RoundPlan
from runtime.federation.release import MANUAL, RoundTrigger, TrainingEnergy
from runtime.federation.secagg import SecAggCoordinator
from runtime.federation.state import (
    build_coordinator,
    coordinator_keys,
    finish_interrupted_close,
    load_coordinator_record,
    record_progress,
    save_coordinator_record,
    save_rejection,
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

    async def evaluations(self, plan: RoundPlan, candidate_file: bytes, sites: set[str],
                          seconds: float) -> dict[str, bytes]:
        """Sends the candidate file to `sites` and gathers their signed
        evaluations (hearth-candidate-evaluation/1) by site, waiting up to
        `seconds` for all of them."""
        raise FailedPrecondition("this transport cannot carry a candidate to the sites and "
                                 "their evaluations back")

    async def gate_decided(self, plan: RoundPlan, decision: GateDecision) -> None:
        """Tells the sites that evaluated the candidate what the gate
        decided (a refused candidate has no release to wait for)."""
        return None

    def deferrals(self, plan: RoundPlan) -> dict[str, float]:
        """Sites that answered the plan "deferred until T" (outside their
        training windows), by site; called once the updates are in."""
        return {}

    def training_energy(self, plan: RoundPlan) -> dict[str, TrainingEnergy]:
        """Training energy the sites sent outside their update files (the
        secure-aggregation exchange), by site."""
        return {}

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

    def open(self, now: float, resumable: bool, trigger: RoundTrigger = MANUAL
             ) -> tuple[RoundPlan, bytes]:
        """The next round's plan.  `resumable`: kept in the record so later
        commands see the same round (air-gapped), and returned again while
        that round is open.  `trigger`: why it starts (its release says)."""
        if self.record.open_plan:
            if not resumable:
                raise FailedPrecondition("an air-gapped round is open (`hearth fed plan`); "
                                         "publish it before running online rounds")
            return self.resume()
        envelope = self.c.open_round(now, trigger)
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

    def candidate(self, now: float, secagg_sum: tuple[np.ndarray, list[str]] | None = None
                  ) -> tuple[Candidate, bytes]:
        """Aggregates into the round's candidate; returns it with the
        candidate file for the sites (encrypted under the release key).
        The privacy the round spent is written to the record now."""
        cand = self.c.aggregate(now, secagg_sum)
        assert self.c.accountant is not None
        self.record.rdp = list(self.c.accountant.rdp)
        save_coordinator_record(self.store, self.record)
        signing, _, release_key = coordinator_keys(self.store)
        m = cand.manifest
        blob = seal_candidate_file(CandidateManifest(
            m.federation, cand.round, m.parent_version, m.base_model_sha256, m.adapter_sha256,
            m.adapter_bytes), cand.adapter, signing, release_key)
        return cand, blob

    def judge(self, cand: Candidate, evaluations: dict[str, bytes]) -> GateDecision:
        """The gate's decision on the evaluations that check out; one that
        does not is logged and does not count."""
        figures: dict[str, SiteFigures] = {}
        for sender, envelope in evaluations.items():
            try:
                ev = read_evaluation(envelope, self.c.sites, self.federation, cand.round,
                                     cand.adapter_sha256, sender)
            except HearthError as exc:
                log.warning("round %d: evaluation from %s refused: %s", cand.round, sender, exc)
                continue
            figures[ev.site] = ev.figures()
        s = self.record.settings
        return decide(figures, set(cand.sites), s.gate_margin, s.min_sites)

    def _remember(self, cand: Candidate, decision: GateDecision) -> None:
        self.record.gate.append({"round": cand.round, "version": cand.manifest.version,
                                 "candidate_sha256": cand.adapter_sha256,
                                 **decision.summary()})

    def promote(self, cand: Candidate, decision: GateDecision | None, now: float
                ) -> tuple[Published, bytes]:
        """Signs and stores the release; returns it with its release file
        (the adapter inside is encrypted to the sites)."""
        metrics = {}
        if decision is not None:
            metrics = {"heldout_ppl_candidate": decision.candidate_ppl,
                       "heldout_ppl_current": decision.current_ppl}
            self._remember(cand, decision)
        published = self.c.promote(cand, now, decision, metrics)
        _, _, release_key = coordinator_keys(self.store)
        blob = seal_release_file(published.envelope, published.adapter, release_key)
        self.store.put_bytes(Kind.RELEASE, self.federation, blob)
        self._saved()
        for r in published.rejected:
            log.warning("round %d: update from %s not counted: %s", self.c.rounds_done, r.site,
                        r.reason)
        return published, blob

    def withhold(self, cand: Candidate, decision: GateDecision, now: float) -> Withheld:
        """The gate refused the candidate: nothing is published, the version
        stays, the round's privacy stays spent; a signed rejection record
        goes into the sealed state and the audit log."""
        from runtime.storage.audit import AuditLog

        signing, _, _ = coordinator_keys(self.store)
        decided = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        text = rejection_text(self.federation, cand.round, self.c.version, cand.adapter_sha256,
                              decision, decided)
        record = sign_rejection(text, signing)
        save_rejection(self.store, self.federation, cand.round, record)
        self.c.withhold(cand)
        self._remember(cand, decision)
        self._saved()
        AuditLog(self.store).record_admin("federation.gate_rejected", {
            "federation": self.federation, "round": cand.round, "version": self.c.version,
            "candidate_sha256": cand.adapter_sha256, "reason": decision.reason,
            "margin": decision.margin, "record": text.decode("utf-8")})
        log.warning("round %d: candidate withheld by the gate: %s", cand.round, decision.reason)
        return Withheld(self.c.version, cand.manifest, cand.rejected, decision, record)

    def _saved(self) -> None:
        record_progress(self.record, self.c)
        self.record.open_plan = ""
        save_coordinator_record(self.store, self.record)

    def close(self, now: float, secagg_sum: tuple[np.ndarray, list[str]] | None = None
              ) -> tuple[Published, bytes]:
        """Aggregates, signs and stores the release with no gate (the
        air-gapped `hearth fed publish`: no candidate round trip)."""
        cand, _ = self.candidate(now, secagg_sum)
        return self.promote(cand, None, now)

    def abandon(self, reason: str) -> None:
        if self.c.current is not None or self.c.pending is not None:
            self.c.abandon_round(reason)
            self._saved()


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


def _answers_beside_updates(rounds: CoordinatorRounds, sites: SiteExchange, plan: RoundPlan
                            ) -> None:
    """Deferrals and training energy into the open round before it is
    aggregated (a site that deferred is counted like a late one)."""
    for site, until in sites.deferrals(plan).items():
        rounds.c.defer(site, until)
        log.info("round %d: %s deferred until %s (outside its training windows)", plan.round,
                 site, time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(until)))
    for site, energy in sites.training_energy(plan).items():
        rounds.c.note_energy(site, energy)


async def drive_round(rounds: CoordinatorRounds, sites: SiteExchange, step_seconds: float,
                      trigger: RoundTrigger = MANUAL) -> Published | Withheld:
    """One round from plan to release over an exchange that waits for the
    sites.  The candidate goes to the sites that counted, and is released
    only when the gate passes it (`Published`, with `gate` the decision);
    otherwise it is withheld (`Withheld`: nothing published, the version
    unchanged, the reason in `gate.reason`).  Either way `.promoted` says
    which.  A round that fails before its candidate publishes nothing and
    spends no privacy.  `trigger`: why the round starts, recorded in its
    release's manifest."""
    plan, envelope = rounds.open(time.time(), resumable=False, trigger=trigger)
    await sites.announce_plan(plan, envelope, set(rounds.c.sites))
    log.info("round %d open: %d sites, secure aggregation %s", plan.round, len(rounds.c.sites),
             plan.secure_aggregation)
    training_s = max(1.0, plan.deadline - time.time())
    try:
        if plan.secure_aggregation:
            assert rounds.c.current is not None and rounds.c.current.secagg is not None
            total = await secure_sum(rounds.c.current.secagg, sites, training_s, step_seconds)
            _answers_beside_updates(rounds, sites, plan)
            cand, cand_file = rounds.candidate(time.time(), total)
        else:
            for d in await sites.updates(plan, training_s):
                try:
                    rounds.take_update(d)
                except HearthError as exc:
                    log.warning("round %d: update from %s refused: %s", plan.round, d.label,
                                exc)
            _answers_beside_updates(rounds, sites, plan)
            cand, cand_file = rounds.candidate(time.time())
        evaluations = await sites.evaluations(plan, cand_file, set(cand.sites), step_seconds)
        decision = rounds.judge(cand, evaluations)
        if decision.promoted:
            published, blob = rounds.promote(cand, decision, time.time())
        else:
            withheld = rounds.withhold(cand, decision, time.time())
    except HearthError as exc:
        log.error("round %d failed, no release: %s", plan.round, exc)
        await sites.round_failed(plan, exc)
        rounds.abandon(str(exc))
        raise
    await sites.gate_decided(plan, decision)
    if not decision.promoted:
        return withheld
    await sites.publish_release(published, blob)
    log.info("round %d closed: release v%d (%s)", plan.round, published.version,
             ", ".join(f"{k}={v:.4g}" for k, v in published.manifest.metrics.items()))
    return published
