"""Round plans: what the coordinator asks of the sites for one round, and the
site's decision to take part (no I/O).

A plan is canonical JSON signed with the federation key, in the same
envelope as a release (docs/formats/release-v1.md describes the envelope;
`format` here is "hearth-round-plan/1").  A site takes part only when:

* the signature verifies under a key it trusts;
* the plan is for its federation and base model, and builds on the global
  adapter version the site holds (training on anything else would waste the
  round or, worse, mix versions);
* the deadline has not passed;
* its privacy settings meet the site's own floor (`SitePolicy`, from the
  `[federation]` table of the site's hearth.toml): a minimum noise
  multiplier, a maximum epsilon over every plan the site has answered, and
  a maximum number of rounds a day, whatever the coordinator asks;
* the site has not answered this plan before (a plan is answered at most
  once: a second, freshly noised answer to the same round would spend the
  site's privacy twice; SECURITY-CASES 31);
* the trainer settings are within sane bounds.

The answered plans are the site's ledger (`AnsweredPlan`), kept sealed in
its store (state.py) and recorded before training starts.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.config import FederationConfig
from runtime.errors import AlreadyExists, ConfigError, FailedPrecondition
from runtime.federation.dp import PrivacyAccountant
from runtime.federation.release import UntrustedRelease, open_envelope, sign_envelope

FORMAT = "hearth-round-plan/1"


@dataclass(frozen=True)
class TrainerSettings:
    rank: int = 8
    steps: int = 50
    learning_rate: float = 1e-3
    batch_tokens: int = 2048
    scheme: str = "ffa"            # "ffa": B only, A frozen and shared; "fedavg": A and B
    seed: int = 0                  # of the shared A matrices


@dataclass(frozen=True)
class RoundPlan:
    federation: str
    round: int
    base_model_sha256: str
    adapter_version: int           # the global version sites start from (0: none yet)
    clip_norm: float
    noise_multiplier: float        # 0: no DP
    deadline: float                # Unix time
    secure_aggregation: bool
    trainer: TrainerSettings
    # Fewest updates the round aggregates; with secure aggregation, each site
    # adds 1/sqrt(min_sites) of the round's noise, so the sum has all of it.
    min_sites: int = 1
    format: str = FORMAT

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")


def sign_plan(plan: RoundPlan, key: Ed25519PrivateKey) -> bytes:
    return sign_envelope(plan.canonical(), key)


def _parse(text: bytes) -> RoundPlan:
    try:
        doc = json.loads(text)
        trainer = TrainerSettings(**doc.pop("trainer"))
        plan = RoundPlan(trainer=trainer, **doc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UntrustedRelease(f"round plan: malformed ({exc})") from None
    if plan.format != FORMAT or plan.canonical() != text:
        raise UntrustedRelease("round plan: not a canonical hearth-round-plan/1")
    checks = {
        "round": isinstance(plan.round, int) and plan.round >= 1,
        "min_sites": isinstance(plan.min_sites, int) and 1 <= plan.min_sites <= 100_000,
        "adapter_version": isinstance(plan.adapter_version, int) and plan.adapter_version >= 0,
        "clip_norm": isinstance(plan.clip_norm, float) and 0 < plan.clip_norm < math.inf,
        "noise_multiplier": isinstance(plan.noise_multiplier, float)
        and 0 <= plan.noise_multiplier < math.inf,
        "trainer.rank": isinstance(plan.trainer.rank, int) and 1 <= plan.trainer.rank <= 256,
        "trainer.steps": isinstance(plan.trainer.steps, int) and 1 <= plan.trainer.steps <= 10**6,
        "trainer.learning_rate": isinstance(plan.trainer.learning_rate, float)
        and 0 < plan.trainer.learning_rate <= 1,
        "trainer.scheme": plan.trainer.scheme in ("ffa", "fedavg"),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise UntrustedRelease(f"round plan: out of range: {', '.join(bad)}")
    return plan


def site_noise_std(plan: RoundPlan) -> float:
    """The Gaussian noise a site adds to its clipped update.  With secure
    aggregation only the sum is seen, so the sites split the round's noise
    (distributed DP: at least min_sites shares add up to z * C).  Without
    it the coordinator sees each update, so each carries all of it."""
    full = plan.noise_multiplier * plan.clip_norm
    return full / math.sqrt(plan.min_sites) if plan.secure_aggregation else full


# The delta at which a site reckons its own epsilon (the coordinator's
# default too); the plan does not carry the coordinator's.
SITE_DELTA = 1e-5
DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class SitePolicy:
    """What a site insists on, whatever the coordinator asks."""

    min_noise_multiplier: float = 0.0
    max_epsilon: float = math.inf        # over every plan answered, at SITE_DELTA
    max_rounds_per_day: int = 0          # plans answered in any 24 hours; 0: no limit
    max_clip_norm: float = math.inf
    require_secure_aggregation: bool = False

    def __post_init__(self) -> None:
        where = "federation."
        if not 0 <= self.min_noise_multiplier < math.inf:
            raise ConfigError(f"{where}min_noise_multiplier: must be a number >= 0, got "
                              f"{self.min_noise_multiplier!r}")
        if not self.max_epsilon > 0:        # NaN fails this too
            raise ConfigError(f"{where}max_epsilon: must be a number > 0 (inf: no limit), "
                              f"got {self.max_epsilon!r}")
        if not 0 <= self.max_rounds_per_day <= 1_000_000:
            raise ConfigError(f"{where}max_rounds_per_day: must be in 0..1000000 (0: no "
                              f"limit), got {self.max_rounds_per_day!r}")
        if not self.max_clip_norm > 0:
            raise ConfigError(f"{where}max_clip_norm: must be > 0, got {self.max_clip_norm!r}")


NO_FLOOR = SitePolicy()        # only the at-most-once rule


def site_policy(config: FederationConfig) -> SitePolicy:
    """The policy of a hearth.toml's [federation] table."""
    return SitePolicy(min_noise_multiplier=config.min_noise_multiplier,
                      max_epsilon=config.max_epsilon,
                      max_rounds_per_day=config.max_rounds_per_day)


@dataclass(frozen=True)
class AnsweredPlan:
    """One entry of a site's ledger: a plan it answered (trained for)."""

    plan_id: str                 # plan_id(): SHA-256 of the plan's signed text
    round: int
    at: float                    # Unix time the site took it on
    noise_multiplier: float


def plan_id(plan: RoundPlan) -> str:
    return hashlib.sha256(plan.canonical()).hexdigest()


def site_epsilon_after(answered: Sequence[AnsweredPlan], noise_multiplier: float) -> float:
    """The site's own epsilon at SITE_DELTA once it answers one more plan of
    `noise_multiplier`: every plan it answered released one Gaussian
    mechanism on its data (rate 1: the site took part); inf once any had no
    noise."""
    accountant = PrivacyAccountant(delta=SITE_DELTA)
    for a in answered:
        accountant.spend(1.0, a.noise_multiplier)
    return accountant.epsilon_after(1.0, noise_multiplier)


def check_site_policy(plan: RoundPlan, policy: SitePolicy, answered: Sequence[AnsweredPlan],
                      now: float) -> None:
    """The site's floor and its at-most-once rule, checked before any
    training (SECURITY-CASES 31)."""
    pid = plan_id(plan)
    for a in answered:
        if a.plan_id == pid:
            raise AlreadyExists(f"round plan: this site already answered it (round {a.round}); "
                                "a plan is answered at most once")
    if plan.noise_multiplier < policy.min_noise_multiplier:
        raise FailedPrecondition(f"round plan: noise multiplier {plan.noise_multiplier} is "
                                 f"below this site's floor of {policy.min_noise_multiplier}")
    if plan.clip_norm > policy.max_clip_norm:
        raise FailedPrecondition(f"round plan: clipping norm {plan.clip_norm} is above this "
                                 f"site's ceiling of {policy.max_clip_norm}")
    if policy.require_secure_aggregation and not plan.secure_aggregation:
        raise FailedPrecondition("round plan: this site requires secure aggregation")
    if policy.max_rounds_per_day:
        recent = sum(1 for a in answered if now - a.at < DAY_SECONDS)
        if recent >= policy.max_rounds_per_day:
            raise FailedPrecondition(f"round plan: this site answered {recent} plans in the "
                                     f"last 24 hours, its limit is {policy.max_rounds_per_day}")
    if math.isfinite(policy.max_epsilon):
        after = site_epsilon_after(answered, plan.noise_multiplier)
        if after > policy.max_epsilon:
            raise FailedPrecondition(
                f"round plan: answering it would bring this site's epsilon to {after:.3f} "
                f"(delta {SITE_DELTA:g}, {len(answered)} plans answered before), above its "
                f"limit of {policy.max_epsilon:g}")


def read_plan(envelope: bytes, keys: dict[str, Ed25519PublicKey]) -> RoundPlan:
    """A signed plan's content, with no decision about taking part."""
    return _parse(open_envelope(envelope, keys, "round plan"))


def accept_plan(envelope: bytes, keys: dict[str, Ed25519PublicKey], federation: str,
                base_model_sha256: str, adapter_version: int, now: float,
                policy: SitePolicy = NO_FLOOR, answered: Sequence[AnsweredPlan] = ()
                ) -> RoundPlan:
    plan = read_plan(envelope, keys)
    if plan.federation != federation:
        raise UntrustedRelease(f"round plan: for federation {plan.federation!r}")
    if plan.base_model_sha256 != base_model_sha256:
        raise FailedPrecondition("round plan: for another base model")
    if plan.adapter_version != adapter_version:
        raise FailedPrecondition(f"round plan: builds on adapter version {plan.adapter_version}"
                                 f", this site holds {adapter_version}")
    if now >= plan.deadline:
        raise FailedPrecondition("round plan: its deadline has passed")
    check_site_policy(plan, policy, answered, now)
    return plan
