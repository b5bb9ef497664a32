"""The coordinator's round logic, with no I/O: open a round with a signed plan,
take the sites' updates (sealed files, or the secure-aggregation exchange),
refuse what must not count, combine into a candidate, and sign it as the
next release (`promote`) or drop it (`withhold`) as the gate decides
(gate.py; rounds.py runs the round trip to the sites).

Transports (gRPC, files on removable media) and persistence are injected
around it; building the adapter file from the global vector is a callable
(it needs the base model's tensor shapes, which the core does not read).

The vector a site sends for one round (`payload_layout`):

* without secure aggregation: ``delta ‖ [nll_sum, eval_tokens]`` in a
  hearth-update/1 file, the weight in its header;
* with it: ``w·delta ‖ [w, nll_sum, eval_tokens]`` masked, so that the sum
  alone gives the weighted mean and the held-out perplexity of the round's
  starting adapter over all sites, and no single site's figures.

The weight w is the site's training tokens, or 1 with DP on: a
data-dependent weight would let one site's influence exceed the clipping
bound that the privacy accounting assumes.
"""
from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.federation.aggregate import Rejection, SiteUpdate, fedavg
from runtime.federation.dp import PrivacyAccountant
from runtime.federation.plan import (
    RoundPlan,
    TrainerSettings,
    read_plan,
    sign_plan,
    site_noise_std,
)
from runtime.federation.release import (
    MANUAL,
    ReleaseManifest,
    RoundTrigger,
    TrainingEnergy,
    key_fingerprint,
    sign_release,
)
from runtime.federation.secagg import SecAggCoordinator
from runtime.federation.update_bundle import UpdateInbox

if TYPE_CHECKING:                       # gate.py reads SiteEval from here
    from runtime.federation.gate import GateDecision

EVAL_FIELDS = 2          # held-out NLL sum and token count, of the round's starting adapter


@dataclass(frozen=True)
class FederationSettings:
    federation: str
    base_model_sha256: str
    trainable_size: int
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0          # 0: no DP
    delta: float = 1e-5
    epsilon_budget: float = math.inf
    min_sites: int = 2
    # With secure aggregation, min_sites is also the threshold: the masks
    # come off with shares from that many survivors, and no fewer.
    secure_aggregation: bool = False
    round_seconds: float = 600.0
    # The gate (gate.py): a candidate is released only if its held-out
    # perplexity is at most the current version's times (1 + gate_margin),
    # on every site that evaluated it and over all of them.
    gate_margin: float = 0.02


@dataclass(frozen=True)
class SiteEval:
    nll_sum: float
    tokens: float


@dataclass(frozen=True)
class Candidate:
    """A round's aggregate before the gate: the adapter the coordinator
    would release, and its manifest, not signed yet."""

    round: int
    trainable: np.ndarray
    adapter: bytes
    manifest: ReleaseManifest          # unsigned; the version it would get
    rejected: list[Rejection]          # updates that did not count
    sites: list[str]                   # the sites whose updates counted

    @property
    def adapter_sha256(self) -> str:
        return self.manifest.adapter_sha256


@dataclass(frozen=True)
class Published:
    version: int
    envelope: bytes
    adapter: bytes
    manifest: ReleaseManifest
    rejected: list[Rejection]
    gate: GateDecision | None = None   # None: released without the gate (air-gapped)
    promoted: bool = True


@dataclass(frozen=True)
class Withheld:
    """A candidate the gate refused: nothing was published, the version
    stays.  `manifest` is the candidate's, never signed."""

    version: int                       # the federation's version, unchanged
    manifest: ReleaseManifest
    rejected: list[Rejection]
    gate: GateDecision
    record: bytes                      # the signed hearth-gate-rejection/1 envelope
    promoted: bool = False


def update_norm_bound(plan: RoundPlan, n: int) -> float:
    """The largest norm a clipped, then noised update may have: the clip
    norm plus a bound on the noise's norm, sigma * (sqrt(n) + 6), which a
    Gaussian vector exceeds with probability below exp(-18) (chi
    concentration).  An update above it was not clipped."""
    sigma = site_noise_std(plan)
    return plan.clip_norm + sigma * (math.sqrt(n) + 6.0) if sigma > 0 else plan.clip_norm


def split_payload(vec: np.ndarray, n: int) -> tuple[np.ndarray, SiteEval]:
    return vec[:n], SiteEval(float(vec[n]), float(vec[n + 1]))


@dataclass
class OpenRound:
    plan: RoundPlan
    envelope: bytes
    inbox: UpdateInbox | None = None
    secagg: SecAggCoordinator | None = None
    updates: list[SiteUpdate] = field(default_factory=list)
    evals: dict[str, SiteEval] = field(default_factory=dict)
    refused: list[Rejection] = field(default_factory=list)
    trigger: RoundTrigger = MANUAL      # why it started; its release's manifest says so
    # Sites that answered the plan "deferred until T" (outside their
    # training windows): counted like late sites, T kept for the metrics.
    deferred: dict[str, float] = field(default_factory=dict)
    energy: dict[str, TrainingEnergy] = field(default_factory=dict)   # by site, as sent


@dataclass
class Coordinator:
    settings: FederationSettings
    signing_key: Ed25519PrivateKey
    exchange_key: X25519PrivateKey                 # sites encrypt updates to it
    sites: dict[str, Ed25519PublicKey]             # enrolled: name -> signing key
    build_adapter: Callable[[np.ndarray], bytes]
    version: int = 0
    global_trainable: np.ndarray | None = None
    accountant: PrivacyAccountant | None = None
    rounds_done: int = 0
    current: OpenRound | None = None
    # The highest round number a plan carried.  A round that opened and
    # never closed (failed, or the service stopped) keeps its number: sites
    # that answered it wait for a higher one, so numbers are never reused.
    last_round: int = 0
    pending: Candidate | None = None               # aggregated, before the gate


    def __post_init__(self) -> None:
        n = self.settings.trainable_size
        if self.global_trainable is None:
            self.global_trainable = np.zeros(n, dtype=np.float32)
        if self.global_trainable.shape != (n,):
            raise InvalidArgument(f"global adapter: {self.global_trainable.size} values, the "
                                  f"federation's layout has {n}")
        if self.accountant is None:
            self.accountant = PrivacyAccountant(delta=self.settings.delta,
                                                epsilon_budget=self.settings.epsilon_budget)

    # ---- rounds ---------------------------------------------------------------------

    def epsilon(self) -> float | None:
        """Spent so far; None when rounds ran without DP (no finite bound)."""
        assert self.accountant is not None
        if self.rounds_done and self.settings.noise_multiplier == 0:
            return None
        return self.accountant.epsilon()

    def open_round(self, now: float, trigger: RoundTrigger = MANUAL) -> bytes:
        """The signed plan of the next round.  Refused when a round is open,
        or when the privacy budget could not pay for it.  `trigger`: why it
        starts, carried into its release's manifest."""
        s = self.settings
        if self.current is not None:
            raise FailedPrecondition(f"round {self.current.plan.round} is still open")
        if self.pending is not None:
            raise FailedPrecondition(f"round {self.pending.round}: its candidate is before "
                                     "the gate")
        if len(self.sites) < s.min_sites:
            raise FailedPrecondition(f"a round needs {s.min_sites} sites, {len(self.sites)} "
                                     "are enrolled")
        assert self.accountant is not None
        if math.isfinite(s.epsilon_budget):
            if s.noise_multiplier == 0:
                raise FailedPrecondition("privacy budget: an epsilon budget is set but the "
                                         "noise multiplier is 0; no round can stay within it")
            after = self.accountant.epsilon_after(1.0, s.noise_multiplier)
            if after > s.epsilon_budget:
                raise FailedPrecondition(
                    f"privacy budget: round {self.rounds_done + 1} would bring epsilon to "
                    f"{after:.3f}, above the budget of {s.epsilon_budget:g} "
                    f"(delta {s.delta:g}); the federation has spent "
                    f"{self.accountant.epsilon():.3f}")
        plan = RoundPlan(
            federation=s.federation, round=self.next_round(),
            base_model_sha256=s.base_model_sha256, adapter_version=self.version,
            clip_norm=float(s.clip_norm), noise_multiplier=float(s.noise_multiplier),
            deadline=float(now + s.round_seconds), secure_aggregation=s.secure_aggregation,
            trainer=s.trainer, min_sites=s.min_sites)
        envelope = sign_plan(plan, self.signing_key)
        self._start(plan, envelope, trigger)
        return envelope

    def next_round(self) -> int:
        return max(self.rounds_done, self.last_round) + 1

    def reopen_round(self, envelope: bytes) -> RoundPlan:
        """The round of a plan this coordinator signed earlier (air-gapped
        rounds span several commands); updates are submitted again."""
        key = self.signing_key.public_key()
        plan = read_plan(envelope, {key_fingerprint(key): key})
        # opened by this coordinator (last_round), or by one from before
        # last_round was kept (rounds_done + 1)
        expected = max(self.last_round, self.rounds_done + 1)
        if plan.round != expected or plan.adapter_version != self.version:
            raise FailedPrecondition(f"round plan {plan.round} is not the next round "
                                     f"({expected})")
        self._start(plan, envelope)
        return plan

    def _start(self, plan: RoundPlan, envelope: bytes, trigger: RoundTrigger = MANUAL
               ) -> None:
        s = self.settings
        self.last_round = max(self.last_round, plan.round)
        if plan.secure_aggregation:
            round_id = hashlib.sha256(envelope).digest()
            self.current = OpenRound(plan, envelope,
                                     secagg=SecAggCoordinator(round_id, plan.min_sites),
                                     trigger=trigger)
        else:
            self.current = OpenRound(plan, envelope, inbox=UpdateInbox(
                s.federation, plan.round, self.exchange_key, self.sites,
                s.trainable_size + EVAL_FIELDS), trigger=trigger)

    def _round(self) -> OpenRound:
        if self.current is None:
            raise FailedPrecondition("no round is open")
        return self.current

    def submit_update(self, blob: bytes, site: str | None = None) -> str:
        """One sealed update (plain rounds).  `site`: the sender as the
        transport authenticated it (mTLS), which must match the file's."""
        r = self._round()
        if r.inbox is None:
            raise FailedPrecondition(f"round {r.plan.round} uses secure aggregation; updates "
                                     "go through its exchange")
        update = r.inbox.open_update(blob)
        if site is not None and update.site != site:
            r.inbox.received.discard(update.site)
            raise FailedPrecondition(f"update: signed by site {update.site!r} but sent by "
                                     f"{site!r}")
        if update.site in r.inbox.energy:
            r.energy[update.site] = r.inbox.energy[update.site]
        delta, ev = split_payload(update.delta, self.settings.trainable_size)
        weight = 1 if self.settings.noise_multiplier > 0 else update.tokens
        r.updates.append(SiteUpdate(update.site, delta.copy(), weight))
        r.evals[update.site] = ev
        return update.site

    def defer(self, site: str, until: float) -> None:
        """The site answered the open round "deferred until `until`": it
        sends nothing this round, which goes on without it (or fails, as
        with a late site, when too few remain for the plan's minimum)."""
        r = self._round()
        if site not in self.sites:
            raise FailedPrecondition(f"deferral: site {site!r} is not enrolled")
        if not math.isfinite(until):
            raise InvalidArgument("deferral: the time it defers to must be finite")
        r.deferred[site] = float(until)

    def note_energy(self, site: str, energy: TrainingEnergy) -> None:
        """A site's training energy that came outside its update file (the
        secure-aggregation exchange carries no per-site file)."""
        if site not in self.sites:
            raise FailedPrecondition(f"training energy: site {site!r} is not enrolled")
        self._round().energy[site] = energy

    def _too_few(self, r: OpenRound, arrived: int) -> None:
        """A clearer refusal than aggregation's when deferrals left too few."""
        if r.deferred and arrived < r.plan.min_sites:
            raise FailedPrecondition(
                f"aggregation: {arrived} updates, the round needs {r.plan.min_sites}; "
                f"deferred: " + ", ".join(f"{site} until {_rfc3339(t)}"
                                          for site, t in sorted(r.deferred.items())))

    def aggregate(self, now: float, secagg_sum: tuple[np.ndarray, list[str]] | None = None
                  ) -> Candidate:
        """Aggregates what arrived into the round's candidate (not signed,
        not released: the gate decides).  The round's privacy is spent here:
        the sites' noised updates have left them whatever the gate says.
        With secure aggregation, `secagg_sum` is SecAggCoordinator.finish's
        result."""
        r = self._round()
        s = self.settings
        n = s.trainable_size
        if r.secagg is not None:
            if secagg_sum is None:
                raise FailedPrecondition("secure aggregation: the round has no unmasked sum")
            total, survivors = secagg_sum
            if total.shape != (n + 1 + EVAL_FIELDS,) or not np.all(np.isfinite(total)):
                raise FailedPrecondition("secure aggregation: the sum has the wrong shape or "
                                         "is not finite")
            weight = float(total[n])
            self._too_few(r, len(survivors))
            if len(survivors) < s.min_sites or weight <= 0:
                raise FailedPrecondition(f"aggregation: {len(survivors)} sites, the round "
                                         f"needs {s.min_sites}")
            # The coordinator cannot check one site's norm under secure
            # aggregation (that would take a zero-knowledge range proof);
            # sites clip themselves, and the plan they verified says how.
            mean = (total[:n] / weight).astype(np.float32)
            evals = SiteEval(float(total[n + 1]), float(total[n + 2]))
            counted, rejected = sorted(survivors), list(r.refused)
        else:
            self._too_few(r, len(r.updates))
            mean, rejected = fedavg(r.updates, n, update_norm_bound(r.plan, n), s.min_sites)
            rejected = list(r.refused) + rejected
            bad = {x.site for x in rejected}
            kept = [r.evals[u.site] for u in r.updates if u.site not in bad]
            evals = SiteEval(math.fsum(e.nll_sum for e in kept), math.fsum(e.tokens for e in kept))
            counted = sorted(u.site for u in r.updates if u.site not in bad)
        assert self.accountant is not None and self.global_trainable is not None
        if s.noise_multiplier > 0:
            self.accountant.spend(1.0, s.noise_multiplier)
        new_global = (self.global_trainable + mean).astype(np.float32)
        adapter = self.build_adapter(new_global)
        metrics = {"round": float(r.plan.round), "sites": float(len(counted)),
                   "rejected": float(len(rejected))}
        if r.deferred:
            metrics["deferred"] = float(len(r.deferred))
        if evals.tokens > 0:
            metrics["heldout_ppl_parent"] = math.exp(evals.nll_sum / evals.tokens)
        eps = self.accountant.epsilon() if s.noise_multiplier > 0 else None
        if eps is not None:
            metrics["epsilon"] = eps
            metrics["delta"] = s.delta
        manifest = ReleaseManifest(
            federation=s.federation, version=self.version + 1, parent_version=self.version,
            base_model_sha256=s.base_model_sha256,
            adapter_sha256=hashlib.sha256(adapter).hexdigest(), adapter_bytes=len(adapter),
            created=_rfc3339(now), metrics=metrics, trigger=r.trigger,
            training_energy=dict(r.energy))
        self.current = None
        self.pending = Candidate(r.plan.round, new_global, adapter, manifest, rejected, counted)
        return self.pending

    def _pending(self, candidate: Candidate) -> None:
        if self.pending is not candidate:
            raise FailedPrecondition(f"round {candidate.round}: not this coordinator's pending "
                                     "candidate")

    def promote(self, candidate: Candidate, now: float, gate: GateDecision | None = None,
                metrics: dict[str, float] | None = None) -> Published:
        """Signs the candidate as the next release; `metrics`: the gate's
        figures, added to the manifest's."""
        self._pending(candidate)
        manifest = replace(candidate.manifest, created=_rfc3339(now),
                           metrics={**candidate.manifest.metrics, **(metrics or {})})
        envelope = sign_release(manifest, self.signing_key)
        self.version += 1
        self.global_trainable = candidate.trainable
        self.rounds_done += 1
        self.pending = None
        return Published(self.version, envelope, candidate.adapter, manifest,
                         candidate.rejected, gate)

    def withhold(self, candidate: Candidate) -> None:
        """The gate refused the candidate: the round is over (its number is
        used; its privacy stays spent), the version and adapter stay."""
        self._pending(candidate)
        self.rounds_done += 1
        self.pending = None

    def close_round(self, now: float, secagg_sum: tuple[np.ndarray, list[str]] | None = None
                    ) -> Published:
        """Aggregates what arrived and signs the next release, with no gate
        (the air-gapped `hearth fed publish`, and tests of aggregation)."""
        return self.promote(self.aggregate(now, secagg_sum), now)

    def abandon_round(self, reason: str) -> None:
        """Closes the open round without a release (too few sites by the
        deadline); its privacy cost is not spent, nothing was published.
        A round that had reached its candidate is withheld instead: its
        privacy was spent."""
        if self.pending is not None:
            self.withhold(self.pending)
            return
        r = self._round()
        r.refused.append(Rejection("*", reason))
        self.current = None


def _rfc3339(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
