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
"""
from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from runtime.errors import FailedPrecondition
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.participant import LocalUpdate, Trainer, plain_payload, secagg_payload
from runtime.federation.plan import NO_FLOOR, RoundPlan, SitePolicy, accept_plan, read_plan
from runtime.federation.release import ReleaseManifest
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

    def submit_masked(self, round_no: int, masked: MaskedInput) -> tuple[list[str], list[str]]:
        """(survivors, dropped)."""
        raise FailedPrecondition(_ONLINE_ONLY)

    def unmask(self, round_no: int, response: UnmaskResponse) -> None:
        raise FailedPrecondition(_ONLINE_ONLY)


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


@dataclass(frozen=True)
class Answer:
    plan: RoundPlan
    update: LocalUpdate
    trainer: Trainer
    verdict: GateVerdict | None = None


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
                    upd: LocalUpdate) -> None:
    """The site's side of secure aggregation: only the masked vector leaves."""
    agg = SecAggSite(site, hashlib.sha256(envelope).digest(), plan.min_sites)
    roster = link.advertise_keys(plan.round, agg.advertise())
    inbound = link.share_keys(plan.round, agg.share(roster))
    survivors, dropped = link.submit_masked(plan.round,
                                            agg.mask(secagg_payload(upd, plan), inbound))
    link.unmask(plan.round, agg.unmask(survivors, dropped))


def take_part(site: SiteContext, link: CoordinatorLink, envelope: bytes, data: SiteData,
              policy: SitePolicy = NO_FLOOR, threads: int | None = None,
              seed: int | None = None, reuse: Trainer | None = None) -> Answer:
    """Steps 1-3 of a round: accept, record, train, send."""
    plan = accept_site_plan(site, envelope, policy, link.secure_aggregation)
    upd, trainer = train_for_plan(site, plan, data, threads, seed, reuse)
    log.info("round %d: trained on %d tokens, held-out perplexity %.3f -> %.3f locally, "
             "update norm %.4g", plan.round, upd.tokens, upd.ppl_start, upd.ppl_local,
             upd.norm)
    if plan.secure_aggregation:
        secure_exchange(link, site.record.site, plan, envelope, upd)
    else:
        blob = seal_update(SiteUpdate(site.record.site, plain_payload(upd), upd.tokens),
                           site.kit.federation, plan.round, site.signing_key,
                           site.coordinator_exchange())
        link.submit_update(plan, site.record.site, blob)
    return Answer(plan, upd, trainer, judge_candidate(site, link, plan, data, threads, trainer))


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
                seed: int | None = None, after_round: int = 0) -> SiteRun:
    """Takes part in rounds after `after_round` until the coordinator has
    finished, or until the link cannot bring a round's release (files)."""
    run = SiteRun(site.record.site)
    trainer: Trainer | None = None
    while (envelope := link.fetch_plan(after_round)) is not None:
        announced = read_plan(envelope, site.federation_keys())
        if announced.adapter_version > site.record.applied_version:
            # Missed a release (joined late, or was down): catch up first.
            _fetch_and_apply(link, site, site.record.applied_version)
        answer = take_part(site, link, envelope, data, policy, threads, seed, trainer)
        trainer = answer.trainer
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
