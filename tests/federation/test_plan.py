"""Round plans: signed by the federation, checked by each site against its
own state and privacy floor."""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.config import parse_config
from runtime.errors import AlreadyExists, ConfigError, FailedPrecondition
from runtime.federation.plan import (
    NO_FLOOR,
    AnsweredPlan,
    RoundPlan,
    SitePolicy,
    TrainerSettings,
    accept_plan,
    plan_id,
    sign_plan,
    site_epsilon_after,
    site_policy,
)
from runtime.federation.release import UntrustedRelease, key_fingerprint

KEY = Ed25519PrivateKey.generate()
KEYS = {key_fingerprint(KEY.public_key()): KEY.public_key()}
BASE = hashlib.sha256(b"base").hexdigest()
PLAN = RoundPlan(federation="clinics", round=3, base_model_sha256=BASE, adapter_version=2,
                 clip_norm=1.0, noise_multiplier=1.1, deadline=2000.0, secure_aggregation=True,
                 trainer=TrainerSettings(rank=4, steps=20))


def accept(plan: RoundPlan = PLAN, key: Ed25519PrivateKey = KEY, **kw: object) -> RoundPlan:
    args: dict = dict(federation="clinics", base_model_sha256=BASE, adapter_version=2, now=1000.0)
    args.update(kw)
    return accept_plan(sign_plan(plan, key), KEYS, **args)


def test_a_good_plan_is_accepted_as_sent() -> None:
    assert accept() == PLAN


@pytest.mark.parametrize(("change", "kw", "error", "message"), [
    ({}, {"now": 2000.0}, FailedPrecondition, "deadline has passed"),
    ({}, {"adapter_version": 1}, FailedPrecondition, "builds on adapter version 2"),
    ({}, {"base_model_sha256": "0" * 64}, FailedPrecondition, "another base model"),
    ({"federation": "banks"}, {}, UntrustedRelease, "federation 'banks'"),
    ({}, {"policy": SitePolicy(min_noise_multiplier=2.0)}, FailedPrecondition, "floor"),
    ({}, {"policy": SitePolicy(max_clip_norm=0.5)}, FailedPrecondition, "ceiling"),
    ({"secure_aggregation": False}, {"policy": SitePolicy(require_secure_aggregation=True)},
     FailedPrecondition, "requires secure aggregation"),
    ({"clip_norm": -1.0}, {}, UntrustedRelease, "clip_norm"),
    ({"round": 0}, {}, UntrustedRelease, "round"),
    ({"trainer": TrainerSettings(scheme="magic")}, {}, UntrustedRelease, "trainer.scheme"),
])
def test_plans_a_site_must_refuse(change: dict, kw: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        accept(dataclasses.replace(PLAN, **change), **kw)


def test_unknown_key_and_tampering() -> None:
    with pytest.raises(UntrustedRelease, match="unknown key"):
        accept(key=Ed25519PrivateKey.generate())
    env = sign_plan(PLAN, KEY).replace(b'\\"noise_multiplier\\":1.1', b'\\"noise_multiplier\\":0.0')
    with pytest.raises(UntrustedRelease, match="does not verify"):
        accept_plan(env, KEYS, "clinics", BASE, 2, 1000.0)


# ---- the site's privacy floor and its ledger (SECURITY-CASES 31) ------------------------
# On e3a5e70 `accept_plan` had no ledger and no rounds or epsilon limit: each
# test below fails there (no `answered`, `max_epsilon`, `max_rounds_per_day`).

def answered(*plans: RoundPlan, at: float = 900.0) -> list[AnsweredPlan]:
    return [AnsweredPlan(plan_id(p), p.round, at, p.noise_multiplier) for p in plans]


def test_a_plan_is_answered_at_most_once() -> None:
    with pytest.raises(AlreadyExists, match="already answered it"):
        accept(answered=answered(PLAN))
    # another plan for the same round (re-signed with a new deadline) is another plan
    later = dataclasses.replace(PLAN, deadline=3000.0)
    assert accept(later, answered=answered(PLAN)) == later


def test_noise_below_the_floor_is_refused() -> None:
    assert accept(policy=SitePolicy(min_noise_multiplier=1.1)) == PLAN
    with pytest.raises(FailedPrecondition, match=r"noise multiplier 0.0 is below .* 0.5"):
        accept(dataclasses.replace(PLAN, noise_multiplier=0.0),
               policy=SitePolicy(min_noise_multiplier=0.5))


def test_rounds_per_day() -> None:
    earlier = [dataclasses.replace(PLAN, round=r) for r in (1, 2)]
    policy = SitePolicy(max_rounds_per_day=2)
    with pytest.raises(FailedPrecondition, match="answered 2 plans in the last 24 hours"):
        accept(policy=policy, answered=answered(*earlier, at=500.0))
    # answers older than a day do not count
    assert accept(policy=policy, answered=answered(*earlier, at=1000.0 - 86_401)) == PLAN


def test_epsilon_over_every_answered_plan() -> None:
    """The site's own accountant composes every plan it answered: the
    Gaussian mechanism at z = 1.1, once, costs epsilon about 4.24 at delta
    1e-5 (q = 1: alpha / (2 z^2) per order); twice about 6.33."""
    once = site_epsilon_after([], 1.1)
    twice = site_epsilon_after(answered(dataclasses.replace(PLAN, round=2)), 1.1)
    assert 3 < once < twice < 2 * once
    assert accept(policy=SitePolicy(max_epsilon=once * 1.01)) == PLAN
    with pytest.raises(FailedPrecondition, match=r"bring this site's epsilon to .* above"):
        accept(policy=SitePolicy(max_epsilon=once * 1.01),
               answered=answered(dataclasses.replace(PLAN, round=2)))
    # a plan without noise has no finite epsilon: refused under any limit
    with pytest.raises(FailedPrecondition, match="epsilon to inf"):
        accept(dataclasses.replace(PLAN, noise_multiplier=0.0),
               policy=SitePolicy(max_epsilon=1000.0))
    # ... and so is everything after one was answered
    with pytest.raises(FailedPrecondition, match="epsilon to inf"):
        accept(policy=SitePolicy(max_epsilon=1000.0),
               answered=answered(dataclasses.replace(PLAN, round=2, noise_multiplier=0.0)))


@pytest.mark.parametrize(("kw", "message"), [
    ({"min_noise_multiplier": -1.0}, "min_noise_multiplier"),
    ({"min_noise_multiplier": math.nan}, "min_noise_multiplier"),
    ({"max_epsilon": 0.0}, "max_epsilon"),
    ({"max_epsilon": math.nan}, "max_epsilon"),
    ({"max_rounds_per_day": -1}, "max_rounds_per_day"),
])
def test_a_bad_policy_is_a_config_error(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"federation\.{message}"):
        SitePolicy(**kw)


def test_the_policy_comes_from_the_federation_table_of_hearth_toml() -> None:
    config = parse_config({"federation": {"min_noise_multiplier": 0.8, "max_epsilon": 6,
                                          "max_rounds_per_day": 3}})
    assert site_policy(config.federation) == SitePolicy(0.8, 6.0, 3)
    assert site_policy(parse_config({}).federation) == NO_FLOOR
    with pytest.raises(ConfigError, match=r"federation\.max_rounds: unknown key"):
        parse_config({"federation": {"max_rounds": 3}})


@pytest.mark.parametrize("command", ["participate", "export-update"])
def test_the_site_commands_take_the_floor_from_config(tmp_path: Path, command: str) -> None:
    from runtime.cli.fed import _site_policy
    from runtime.cli.main import parser

    config = tmp_path / "hearth.toml"
    config.write_text("[federation]\nmin_noise_multiplier = 1.0\nmax_epsilon = 8.0\n"
                      "max_rounds_per_day = 4\n")
    extra = ["--plan", "p", "--out", "o"] if command == "export-update" else []
    args = parser().parse_args(["fed", command, "--data", "notes", *extra,
                                "--config", str(config)])
    assert _site_policy(args) == SitePolicy(1.0, 8.0, 4)
    args = parser().parse_args(["fed", command, "--data", "notes", *extra])
    assert _site_policy(args) == NO_FLOOR
