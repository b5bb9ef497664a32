"""Round plans: signed by the federation, checked by each site against its
own state and privacy floor."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import FailedPrecondition
from runtime.federation.plan import RoundPlan, SitePolicy, TrainerSettings, accept_plan, sign_plan
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
