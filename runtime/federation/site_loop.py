"""A site's part of the rounds, written once for every transport.

`CoordinatorLink` is what a site needs from its coordinator: the next
signed plan, a place to send its sealed update (or the secure-aggregation
exchange), and the release.  Two transports implement it, in the manner of
python-tuf's FetcherInterface: gRPC over mutual TLS (online_site.GrpcLink)
and files on removable media (files.FileLink).  The loop below decides
what to trust and does the training; the link only moves bytes.

One round, at a site:

1. the plan is verified (signature, federation, base model, the version the
   site holds, deadline) and held against the site's privacy floor and its
   ledger of answered plans (plan.py; SECURITY-CASES 31); the transport must
   be able to carry what the plan asks (secure aggregation is online only);
2. the plan is entered in the sealed ledger, before any training, so it is
   answered at most once, even across a crash or restart;
3. train, clip, add noise (participant.py), then seal and submit the update,
   or run the secure-aggregation exchange;
4. the gate (gate.py): evaluate the round's candidate and the version the
   site serves on its held-out data, send the signed figures, and learn
   whether the candidate was promoted (online only; a link that cannot
   bring the candidate skips this);
5. fetch the release, verify it and apply it (state.SiteContext); over files
   it comes later, by `hearth fed import-release`.  A withheld candidate
   has no release: the site keeps its version for the next round.

Before step 1, a site outside its training windows (`[federation]
training_windows`, energy/windows.py; `TrainingConditions` holds them with
the clock) defers: it answers the plan "deferred until T" (`link.defer`)
and waits for the next round; the plan is not entered in its ledger and
costs no privacy.  Training in step 3 is metered (the same meters as the
daemon's energy accounting), and the joules go with the update.
"""
from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo

from runtime.energy.accountant import Meter
from runtime.energy.windows import NO_WINDOWS, TrainingWindows
from runtime.errors import FailedPrecondition
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.participant import LocalUpdate, Trainer, plain_payload, secagg_payload
from runtime.federation.plan import NO_FLOOR, RoundPlan, SitePolicy, accept_plan, read_plan
from runtime.federation.release import ReleaseManifest, TrainingEnergy
from runtime.federation.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    SecAggSite,
    UnmaskResponse,
)
from runtime.federation.site_training import (
    SiteData,
    evaluate_candidate,
    evaluate_site,
    remember_trainer_settings,
    train_for_plan,
)
from runtime.federation.state import SiteContext
from runtime.federation.update_bundle import seal_update

log = logging.getLogger("hearth.federation")

_ONLINE_ONLY = ("secure aggregation is an exchange between online sites; this transport "
                "cannot carry it")
# What a deferring site tells of its windows: the next two days' openings.
WINDOWS_HORIZON_S = 2 * 86400.0


class CoordinatorLink(ABC):
    """How a site reaches its coordinator.  The secure-aggregation steps
    are for transports that can hold a conversation; the others refuse."""

    secure_aggregation: bool = False
    bytes_sent: int = 0

    @abstractmethod
    def fetch_plan(self, after_round: int) -> bytes | None:
        """The signed plan of the next round after `after_round`, or None
        when there is none (the coordinator has finished)."""

    @abstractmethod
    def submit_update(self, plan: RoundPlan, site: str, sealed_update: bytes) -> None:
        """A sealed hearth-update/1 file for the plan's round."""

    @abstractmethod
    def fetch_release(self, after_version: int) -> bytes | None:
        """A release file above `after_version`, or None when this link
        cannot bring it now (files: it comes later, on other media)."""

    def fetch_candidate(self, round_no: int) -> bytes | None:
        """The round's candidate file for the gate, or None when this site
        is not asked (its update did not count) or the link cannot bring it
        (files)."""
        return None

    def submit_evaluation(self, round_no: int, evaluation: bytes) -> GateVerdict | None:
        """The signed evaluation; the gate's verdict once it has decided."""
        return None

    def advertise_keys(self, round_no: int, mine: AdvertiseKeys) -> list[AdvertiseKeys]:
        raise FailedPrecondition(_ONLINE_ONLY)

    def share_keys(self, round_no: int, shares: EncryptedShares) -> dict[str, bytes]:
        raise FailedPrecondition(_ONLINE_ONLY)

    def submit_masked(self, round_no: int, masked: MaskedInput,
                      energy: TrainingEnergy | None = None) -> tuple[list[str], list[str]]:
        """(survivors, dropped); `energy`: what training cost the site."""
        raise FailedPrecondition(_ONLINE_ONLY)

    def defer(self, plan: RoundPlan, site: str, until: float,
              windows: list[tuple[float, float]]) -> None:
        """Answers the plan "deferred until `until`" (the site is outside its
        training windows; `windows`: its next openings)."""
        raise FailedPrecondition(f"round {plan.round}: this site is outside its training "
                                 f"windows until {_utc(until)}; this transport cannot say "
                                 "so, and the coordinator will count the site as late")

    def unmask(self, round_no: int, response: UnmaskResponse) -> None:
        raise FailedPrecondition(_ONLINE_ONLY)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class TrainingConditions:
    """When a site trains and how the energy is measured: its windows, a
    meter (runtime/energy: NVML, RAPL or the labelled estimate; None: not
    measured), and the clock and time zone the windows are read in (passed
    in, so a test decides what "now" is; tz None: local time)."""

    windows: TrainingWindows = NO_WINDOWS
    meter: Meter | None = None
    clock: Callable[[], float] = time.time
    tz: tzinfo | None = None


ANY_TIME = TrainingConditions()


@dataclass(frozen=True)
class GateVerdict:
    promoted: bool
    reason: str
    version: int             # the federation's version after the round


@dataclass
class SiteRun:
    site: str
    ppl_before: float | None = None
    ppl_after: float | None = None
    bytes_sent: int = 0
    rounds: list[int] = field(default_factory=list)
    releases: list[int] = field(default_factory=list)
    withheld: list[int] = field(default_factory=list)     # rounds whose candidate the gate refused
    deferred: list[int] = field(default_factory=list)     # rounds outside the training windows
    training_joules: float = 0.0                          # metered, over the rounds trained
    energy_source: str = ""                               # the meter ("estimate": not measured)


@dataclass(frozen=True)
class Answer:
    plan: RoundPlan
    update: LocalUpdate
    trainer: Trainer
    verdict: GateVerdict | None = None
    energy: TrainingEnergy | None = None


def accept_site_plan(site: SiteContext, envelope: bytes, policy: SitePolicy = NO_FLOOR,
                     secure_aggregation_possible: bool = True, now: float | None = None
                     ) -> RoundPlan:
    """Every check a plan must pass at this site, then the plan goes into
    the site's sealed ledger: from here on it is answered."""
    now = time.time() if now is None else now
    plan = accept_plan(envelope, site.federation_keys(), site.kit.federation,
                       site.base_model_sha256, site.record.applied_version, now, policy,
                       site.record.answered)
    if plan.secure_aggregation and not secure_aggregation_possible:
        raise FailedPrecondition("round plan: asks for secure aggregation, which needs the "
                                 "online transport; air-gapped rounds use DP and encryption")
    site.record_answer(plan, now)
    remember_trainer_settings(site, plan)
    return plan


def secure_exchange(link: CoordinatorLink, site: str, plan: RoundPlan, envelope: bytes,
                    upd: LocalUpdate, energy: TrainingEnergy | None = None) -> None:
    """The site's side of secure aggregation: only the masked vector leaves
    (and, beside it, what training cost)."""
    agg = SecAggSite(site, hashlib.sha256(envelope).digest(), plan.min_sites)
    roster = link.advertise_keys(plan.round, agg.advertise())
    inbound = link.share_keys(plan.round, agg.share(roster))
    survivors, dropped = link.submit_masked(plan.round,
                                            agg.mask(secagg_payload(upd, plan), inbound), energy)
    link.unmask(plan.round, agg.unmask(survivors, dropped))


def defer_outside_windows(site: SiteContext, link: CoordinatorLink, envelope: bytes,
                          conditions: TrainingConditions) -> float | None:
    """None when the site may train now; else it answers the plan
    "deferred until T" over `link` and returns T.  Only the plan's signature
    is checked first: a deferral takes nothing on and spends nothing."""
    now = conditions.clock()
    w = conditions.windows
    if w.inside(now, conditions.tz):
        return None
    plan = read_plan(envelope, site.federation_keys())
    until = w.next_open(now, conditions.tz)
    log.info("round %d: outside the training windows; deferred until %s", plan.round,
             _utc(until))
    link.defer(plan, site.record.site, until,
               w.open_intervals(now, WINDOWS_HORIZON_S, conditions.tz))
    return until


def metered_training(site: SiteContext, plan: RoundPlan, data: SiteData, threads: int | None,
                     seed: int | None, reuse: Trainer | None, meter: Meter | None
                     ) -> tuple[LocalUpdate, Trainer, TrainingEnergy | None]:
    """train_for_plan, with the energy it took on `meter` (loading the
    trainer included: it is part of what a round costs)."""
    before = meter.read() if meter is not None else None
    upd, trainer = train_for_plan(site, plan, data, threads, seed, reuse)
    if meter is None or before is None:
        return upd, trainer, None
    after = meter.read()
    energy = TrainingEnergy(max(0.0, float(after.joules - before.joules)), str(after.source))
    log.info("round %d: training took %.1f J (%s)", plan.round, energy.joules, energy.source)
    return upd, trainer, energy


def take_part(site: SiteContext, link: CoordinatorLink, envelope: bytes, data: SiteData,
              policy: SitePolicy = NO_FLOOR, threads: int | None = None,
              seed: int | None = None, reuse: Trainer | None = None,
              meter: Meter | None = None) -> Answer:
    """Steps 1-3 of a round: accept, record, train (metered), send."""
    plan = accept_site_plan(site, envelope, policy, link.secure_aggregation)
    upd, trainer, energy = metered_training(site, plan, data, threads, seed, reuse, meter)
    log.info("round %d: trained on %d tokens, held-out perplexity %.3f -> %.3f locally, "
             "update norm %.4g", plan.round, upd.tokens, upd.ppl_start, upd.ppl_local,
             upd.norm)
    if plan.secure_aggregation:
        secure_exchange(link, site.record.site, plan, envelope, upd, energy)
    else:
        blob = seal_update(SiteUpdate(site.record.site, plain_payload(upd), upd.tokens),
                           site.kit.federation, plan.round, site.signing_key,
                           site.coordinator_exchange(), energy)
        link.submit_update(plan, site.record.site, blob)
    return Answer(plan, upd, trainer, judge_candidate(site, link, plan, data, threads, trainer),
                  energy)


def judge_candidate(site: SiteContext, link: CoordinatorLink, plan: RoundPlan, data: SiteData,
                    threads: int | None, trainer: Trainer) -> GateVerdict | None:
    """Step 4: the site's evaluation of the round's candidate, and the
    gate's verdict (None: no candidate came over this link)."""
    candidate = link.fetch_candidate(plan.round)
    if candidate is None:
        return None
    envelope, ev = evaluate_candidate(site, plan, candidate, data, threads, trainer)
    log.info("round %d: candidate evaluated: held-out NLL/token %.4f, current %.4f",
             plan.round, ev.candidate.nll_sum / max(ev.candidate.tokens, 1.0),
             ev.current.nll_sum / max(ev.current.tokens, 1.0))
    verdict = link.submit_evaluation(plan.round, envelope)
    if verdict is not None and not verdict.promoted:
        log.warning("round %d: the gate withheld the candidate: %s", plan.round, verdict.reason)
    return verdict


def apply_release(site: SiteContext, release_file: bytes) -> ReleaseManifest:
    """Step 4: every check, then the adapter is sealed into the store."""
    manifest = site.import_release(release_file)
    log.info("applied release v%d (%s)", manifest.version, manifest.metrics)
    return manifest


def _fetch_and_apply(link: CoordinatorLink, site: SiteContext, after: int
                     ) -> ReleaseManifest | None:
    blob = link.fetch_release(after)
    return None if blob is None else apply_release(site, blob)


def participate(site: SiteContext, link: CoordinatorLink, data: SiteData,
                policy: SitePolicy = NO_FLOOR, threads: int | None = None,
                seed: int | None = None, after_round: int = 0,
                conditions: TrainingConditions = ANY_TIME) -> SiteRun:
    """Takes part in rounds after `after_round` until the coordinator has
    finished, or until the link cannot bring a round's release (files).
    A round that comes outside the site's training windows is deferred."""
    run = SiteRun(site.record.site)
    trainer: Trainer | None = None
    while (envelope := link.fetch_plan(after_round)) is not None:
        announced = read_plan(envelope, site.federation_keys())
        if defer_outside_windows(site, link, envelope, conditions) is not None:
            run.deferred.append(announced.round)
            after_round = announced.round
            continue
        if announced.adapter_version > site.record.applied_version:
            # Missed a release (joined late, or was down): catch up first.
            _fetch_and_apply(link, site, site.record.applied_version)
        answer = take_part(site, link, envelope, data, policy, threads, seed, trainer,
                           conditions.meter)
        trainer = answer.trainer
        if answer.energy is not None:
            run.training_joules += answer.energy.joules
            run.energy_source = answer.energy.source
        if run.ppl_before is None:
            run.ppl_before = answer.update.ppl_start
        run.rounds.append(answer.plan.round)
        after_round = answer.plan.round
        if answer.verdict is not None and not answer.verdict.promoted:
            run.withheld.append(answer.plan.round)
            continue                    # nothing was released: the version stays
        manifest = _fetch_and_apply(link, site, answer.plan.adapter_version)
        if manifest is None:
            break
        run.releases.append(manifest.version)
    run.ppl_after = evaluate_site(site, data, threads, trainer)
    run.bytes_sent = link.bytes_sent
    return run
