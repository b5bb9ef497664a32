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
* its privacy settings meet the site's own floor: a site may insist on a
  minimum noise multiplier and a maximum clipping norm, whatever the
  coordinator asks;
* the trainer settings are within sane bounds.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import FailedPrecondition
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


@dataclass(frozen=True)
class SitePolicy:
    """What a site insists on, whatever the coordinator asks."""

    min_noise_multiplier: float = 0.0
    max_clip_norm: float = math.inf
    require_secure_aggregation: bool = False


def read_plan(envelope: bytes, keys: dict[str, Ed25519PublicKey]) -> RoundPlan:
    """A signed plan's content, with no decision about taking part."""
    return _parse(open_envelope(envelope, keys, "round plan"))


def accept_plan(envelope: bytes, keys: dict[str, Ed25519PublicKey], federation: str,
                base_model_sha256: str, adapter_version: int, now: float,
                policy: SitePolicy = SitePolicy()) -> RoundPlan:
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
    if plan.noise_multiplier < policy.min_noise_multiplier:
        raise FailedPrecondition(f"round plan: noise multiplier {plan.noise_multiplier} is "
                                 f"below this site's floor of {policy.min_noise_multiplier}")
    if plan.clip_norm > policy.max_clip_norm:
        raise FailedPrecondition(f"round plan: clipping norm {plan.clip_norm} is above this "
                                 f"site's ceiling of {policy.max_clip_norm}")
    if policy.require_secure_aggregation and not plan.secure_aggregation:
        raise FailedPrecondition("round plan: this site requires secure aggregation")
    return plan
