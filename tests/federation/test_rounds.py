"""The coordinator's round logic with real keys, real sealed updates, real
secure aggregation and real adapter files for the tiny model: what counts,
what is refused, what the release says, and the privacy budget."""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from runtime import errors
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.coordinator import EVAL_FIELDS, Coordinator, FederationSettings, SiteEval
from runtime.federation.participant import (
    LocalUpdate,
    heldout_split,
    secagg_payload,
    split_notes,
)
from runtime.federation.plan import TrainerSettings, accept_plan, read_plan, site_noise_std
from runtime.federation.release import TrustedReleases, key_fingerprint
from runtime.federation.secagg import SecAggSite
from runtime.federation.train import (
    LoraSpec,
    adapter_from_trainable,
    lora_layout,
    trainable_from_adapter,
    trainable_size,
)
from runtime.federation.update_bundle import RefusedUpdate, seal_update

BASE = "ab" * 32
SPEC = LoraSpec(rank=2)
SITES = {f"site-{i}": Ed25519PrivateKey.generate() for i in range(3)}


@pytest.fixture(scope="module")
def layout(tiny_model: Path):  # type: ignore[no-untyped-def]
    return lora_layout(str(tiny_model), SPEC)


def coordinator(layout, **kw: object) -> Coordinator:  # type: ignore[no-untyped-def]
    n = trainable_size(layout, SPEC)
    settings = FederationSettings(federation="clinics", base_model_sha256=BASE,
                                  trainable_size=n, trainer=TrainerSettings(rank=2),
                                  **kw)  # type: ignore[arg-type]
    return Coordinator(settings, Ed25519PrivateKey.generate(), X25519PrivateKey.generate(),
                       {name: k.public_key() for name, k in SITES.items()},
                       lambda v: adapter_from_trainable(layout, SPEC, v))


def payload(delta: np.ndarray, nll: float = 10.0, tokens: float = 5.0) -> np.ndarray:
    return np.concatenate([delta, np.array([nll, tokens], np.float32)]).astype(np.float32)


def sealed(c: Coordinator, site: str, vec: np.ndarray, tokens: int, round_no: int = 1
           ) -> bytes:
    return seal_update(SiteUpdate(site, vec, tokens), "clinics", round_no, SITES[site],
                       c.exchange_key.public_key())


def trusted(c: Coordinator, high_water: int = 0) -> TrustedReleases:
    key = c.signing_key.public_key()
    return TrustedReleases("clinics", {key_fingerprint(key): key}, BASE, high_water)


def test_a_plain_round_is_the_token_weighted_mean_and_a_signed_release(layout) -> None:  # type: ignore[no-untyped-def]
    c = coordinator(layout, min_sites=2)
    n = c.settings.trainable_size
    rng = np.random.default_rng(0)
    deltas = [rng.standard_normal(n).astype(np.float32) * 0.01 for _ in range(3)]
    plan_env = c.open_round(time.time())
    key = c.signing_key.public_key()
    plan = accept_plan(plan_env, {key_fingerprint(key): key}, "clinics", BASE, 0, time.time())
    assert plan.round == 1 and plan.min_sites == 2
    for (site, _), d, tokens in zip(SITES.items(), deltas, (100, 200, 700), strict=True):
        assert c.submit_update(sealed(c, site, payload(d, nll=tokens * 2.0, tokens=tokens),
                                      tokens), site) == site
    published = c.close_round(time.time())
    expected = (deltas[0] * 0.1 + deltas[1] * 0.2 + deltas[2] * 0.7).astype(np.float32)
    got = trainable_from_adapter(layout, SPEC, published.adapter)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    m = trusted(c).accept(published.envelope, published.adapter)
    assert m.version == 1 and m.parent_version == 0
    assert m.metrics["sites"] == 3 and m.metrics["heldout_ppl_parent"] == pytest.approx(
        math.exp(2.0))
    assert "epsilon" not in m.metrics and c.epsilon() is None      # no DP: no bound


def test_23_bad_updates_are_refused_and_the_rest_count(layout) -> None:  # type: ignore[no-untyped-def]
    c = coordinator(layout, min_sites=1, clip_norm=1.0)
    n = c.settings.trainable_size
    c.open_round(time.time())
    good = np.full(n, 0.001, np.float32)
    c.submit_update(sealed(c, "site-0", payload(good), 10), "site-0")
    c.submit_update(sealed(c, "site-1", payload(np.full(n, 1.0, np.float32)), 10), "site-1")
    nan = good.copy()
    nan[3] = np.nan
    c.submit_update(sealed(c, "site-2", payload(nan), 10), "site-2")
    published = c.close_round(time.time())
    reasons = {r.site: r.reason for r in published.rejected}
    assert "clipping bound" in reasons["site-1"] and "NaN" in reasons["site-2"]
    np.testing.assert_allclose(trainable_from_adapter(layout, SPEC, published.adapter), good,
                               atol=1e-7)
    assert published.manifest.metrics["rejected"] == 2


def test_24_updates_for_another_round_site_or_sender_are_refused(layout) -> None:  # type: ignore[no-untyped-def]
    c = coordinator(layout)
    n = c.settings.trainable_size
    c.open_round(time.time())
    vec = payload(np.zeros(n, np.float32))
    with pytest.raises(RefusedUpdate, match="replayed or late"):
        c.submit_update(sealed(c, "site-0", vec, 5, round_no=2))
    with pytest.raises(RefusedUpdate, match="values, the round expects"):
        c.submit_update(sealed(c, "site-0", vec[:-1], 5))
    # the TLS identity and the file's signer must agree
    with pytest.raises(errors.FailedPrecondition, match="sent by"):
        c.submit_update(sealed(c, "site-0", vec, 5), "site-1")
    assert c.submit_update(sealed(c, "site-0", vec, 5), "site-0") == "site-0"
    with pytest.raises(RefusedUpdate, match="already sent"):
        c.submit_update(sealed(c, "site-0", vec, 5), "site-0")
    with pytest.raises(errors.FailedPrecondition, match="still open"):
        c.open_round(time.time())


def test_secure_round_matches_the_plain_mean_with_a_dropped_site(layout) -> None:  # type: ignore[no-untyped-def]
    c = coordinator(layout, min_sites=2, secure_aggregation=True)
    n = c.settings.trainable_size
    envelope = c.open_round(time.time())
    assert c.current is not None and c.current.secagg is not None
    agg = c.current.secagg
    round_id = hashlib.sha256(envelope).digest()
    parties = {s: SecAggSite(s, round_id, 2) for s in SITES}
    roster = agg.collect_keys([p.advertise() for p in parties.values()])
    inbox = agg.route([p.share(roster) for p in parties.values()])
    rng = np.random.default_rng(1)
    deltas = {s: rng.standard_normal(n) * 0.01 for s in SITES}
    weights = {"site-0": 100.0, "site-1": 300.0}
    masked = [parties[s].mask(np.concatenate([deltas[s] * w, [w, 7.0, 3.0]]), inbox[s])
              for s, w in weights.items()]                  # site-2 drops after sharing
    survivors, dropped = agg.collect_masked(masked)
    assert dropped == ["site-2"]
    responses = [parties[s].unmask(survivors, dropped) for s in survivors]
    published = c.close_round(time.time(), agg.finish(responses))
    expected = deltas["site-0"] * 0.25 + deltas["site-1"] * 0.75
    np.testing.assert_allclose(trainable_from_adapter(layout, SPEC, published.adapter),
                               expected, atol=1e-6)
    assert published.manifest.metrics["sites"] == 2
    assert published.manifest.metrics["heldout_ppl_parent"] == pytest.approx(math.exp(14 / 6))
    # the coordinator held masked vectors only: none is any site's input
    for s, y in agg.masked.items():
        assert not np.allclose(y[:n].view(np.int64) / 2**24, deltas[s] * weights[s], atol=1.0)


def test_uniform_weights_when_dp_is_on_plain_round(layout) -> None:  # type: ignore[no-untyped-def]
    """With DP on, three sites with 100, 200 and 700 training tokens count
    equally (a token weight would let one site's influence exceed the clip
    bound the accountant assumes).  Fails when the coordinator's `weight =
    1 if noise_multiplier > 0 else tokens` takes the tokens always (tried:
    the mean comes out 0.1/0.2/0.7)."""
    c = coordinator(layout, min_sites=2, noise_multiplier=1.0, clip_norm=1.0)
    n = c.settings.trainable_size
    rng = np.random.default_rng(4)
    deltas = [rng.standard_normal(n).astype(np.float32) * 0.01 for _ in range(3)]
    c.open_round(time.time())
    for (site, _), d, tokens in zip(SITES.items(), deltas, (100, 200, 700), strict=True):
        c.submit_update(sealed(c, site, payload(d), tokens), site)
    published = c.close_round(time.time())
    got = trainable_from_adapter(layout, SPEC, published.adapter)
    np.testing.assert_allclose(got, (deltas[0] + deltas[1] + deltas[2]) / 3, atol=1e-6)
    assert published.manifest.metrics["sites"] == 3 and "epsilon" in published.manifest.metrics


def test_uniform_weights_when_dp_is_on_secure_round(layout) -> None:  # type: ignore[no-untyped-def]
    """The same under secure aggregation, where the weight travels inside
    the masked vector (`secagg_payload`): three sites with different token
    counts give the plain mean of their noised updates.  Fails when
    `secagg_payload` weighs by tokens with DP on (tried)."""
    c = coordinator(layout, min_sites=2, secure_aggregation=True, noise_multiplier=1.0,
                    clip_norm=1.0)
    n = c.settings.trainable_size
    envelope = c.open_round(time.time())
    assert c.current is not None and c.current.secagg is not None
    plan, agg = c.current.plan, c.current.secagg
    parties = {s: SecAggSite(s, hashlib.sha256(envelope).digest(), 2) for s in SITES}
    roster = agg.collect_keys([p.advertise() for p in parties.values()])
    inbox = agg.route([p.share(roster) for p in parties.values()])
    rng = np.random.default_rng(5)
    updates = {s: LocalUpdate((rng.standard_normal(n) * 0.01).astype(np.float32), tokens,
                              SiteEval(10.0, 5.0), 9.0, 8.0, 0.1)
               for s, tokens in zip(SITES, (100, 200, 700), strict=True)}
    masked = [parties[s].mask(secagg_payload(u, plan), inbox[s]) for s, u in updates.items()]
    survivors, dropped = agg.collect_masked(masked)
    responses = [parties[s].unmask(survivors, dropped) for s in survivors]
    published = c.close_round(time.time(), agg.finish(responses))
    expected = sum(u.delta.astype(np.float64) for u in updates.values()) / 3
    np.testing.assert_allclose(trainable_from_adapter(layout, SPEC, published.adapter),
                               expected, atol=1e-6)


def test_the_privacy_budget_refuses_the_round_that_would_exceed_it(layout) -> None:  # type: ignore[no-untyped-def]
    c = coordinator(layout, min_sites=1, noise_multiplier=2.0, epsilon_budget=4.0,
                    clip_norm=1.0)
    n = c.settings.trainable_size
    spent = []
    for round_no in (1, 2, 3, 4):
        try:
            c.open_round(time.time())
        except errors.FailedPrecondition as exc:
            assert "privacy budget" in str(exc) and "would bring epsilon" in str(exc)
            break
        plan = c.current.plan  # type: ignore[union-attr]
        noise = np.random.default_rng(round_no).standard_normal(n) * site_noise_std(plan)
        c.submit_update(sealed(c, "site-0", payload(noise.astype(np.float32)), 1, round_no))
        published = c.close_round(time.time())
        spent.append(published.manifest.metrics["epsilon"])
    assert len(spent) == 2 and spent == sorted(spent) and spent[-1] <= 4.0
    assert len(spent) < 4                       # the budget stopped the run
    assert c.epsilon() == pytest.approx(spent[-1])


def test_a_budget_without_noise_is_refused(layout) -> None:  # type: ignore[no-untyped-def]
    c = coordinator(layout, epsilon_budget=5.0)
    with pytest.raises(errors.FailedPrecondition, match="noise multiplier is 0"):
        c.open_round(time.time())


def test_site_noise_splits_only_under_secure_aggregation(layout) -> None:  # type: ignore[no-untyped-def]
    plain = coordinator(layout, noise_multiplier=1.0, clip_norm=2.0, min_sites=3)
    secure = coordinator(layout, noise_multiplier=1.0, clip_norm=2.0, min_sites=3,
                         secure_aggregation=True)
    key = Ed25519PrivateKey.generate()
    for c, expected in ((plain, 2.0), (secure, 2.0 / math.sqrt(3))):
        c.signing_key = key
        plan = read_plan(c.open_round(time.time()), {key_fingerprint(key.public_key()):
                                                     key.public_key()})
        assert site_noise_std(plan) == pytest.approx(expected)


def test_reopening_an_air_gapped_round_keeps_its_plan(layout) -> None:  # type: ignore[no-untyped-def]
    c = coordinator(layout)
    envelope = c.open_round(time.time())
    c.current = None                         # a later command, a new process
    assert c.reopen_round(envelope).round == 1
    c.current = None
    c.rounds_done = 1
    with pytest.raises(errors.FailedPrecondition, match="not the next round"):
        c.reopen_round(envelope)


def test_notes_and_heldout_split() -> None:
    assert split_notes("a\nb\n\nc") == ["a\nb", "c"]
    assert split_notes("a\nb\nc\n") == ["a", "b", "c"]
    train, held = heldout_split([f"n{i}" for i in range(20)])
    assert len(held) == 2 and not set(train) & set(held) and len(train) == 18
    with pytest.raises(errors.InvalidArgument):
        heldout_split(["only one"])
    assert EVAL_FIELDS == 2
