"""A site's own differential privacy: `participant.local_update` clips the
update to the plan's norm and adds Gaussian noise of the plan's scale, on
the site, before anything leaves it (SECURITY-CASES 31 relies on it: the
floor the site checks is only worth what this step does).

The trainer is a stand-in whose training moves every value by a known step,
so the update before clipping is known exactly and what the site added can
be taken apart: clipped part + noise.

Checked that these tests can fail (each edit made, run, reverted):
* deleting the noise line of `local_update` (`clipped = clipped +
  gaussian_noise(...)`) fails `test_site_noise_has_the_plan_scale` and
  `test_secure_aggregation_splits_the_noise_between_sites` (the residual
  has standard deviation 0);
* deleting the clip line (`clipped, norm = clip(delta, plan.clip_norm)`,
  with `clipped, norm = delta, ...`) fails `test_the_update_is_clipped`,
  `test_site_noise_has_the_plan_scale` and the secure-aggregation one (the
  residual's mean is the unclipped excess, far outside the bound);
* weighing by tokens in `secagg_payload` with DP on fails
  `test_uniform_weight_in_the_secure_payload_when_dp_is_on`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest

from runtime.errors import InvalidArgument
from runtime.federation.participant import local_update, plain_payload, secagg_payload
from runtime.federation.plan import RoundPlan, TrainerSettings

N = 20_000                  # values: enough for a tight statistical check
STEP_NORM = 100.0           # how far training moves the adapter: far above any clip


@dataclass
class _Result:
    tokens: int


class SteppingTrainer:
    """Training moves the trainable vector by `step`; nothing else."""

    layout = None
    spec = None

    def __init__(self, step: np.ndarray, tokens: int = 321) -> None:
        self.step = step.astype(np.float32)
        self.v = np.zeros_like(self.step)
        self.tokens = tokens

    @property
    def trainable_size(self) -> int:
        return int(self.step.size)

    def get_trainable(self) -> np.ndarray:
        return self.v.copy()

    def set_trainable(self, v: np.ndarray) -> None:
        self.v = np.asarray(v, np.float32).copy()

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split()) + 1))

    def perplexity(self, texts: list[str]) -> float:
        return 12.0

    def train(self, texts: list[str], steps: int, learning_rate: float, batch_tokens: int,
              seed: int) -> _Result:
        self.v = self.v + self.step
        return _Result(self.tokens)


def plan(**change: object) -> RoundPlan:
    base = RoundPlan(federation="clinics", round=1, base_model_sha256="ab" * 32,
                     adapter_version=0, clip_norm=0.5, noise_multiplier=0.0,
                     deadline=time.time() + 600, secure_aggregation=False,
                     trainer=TrainerSettings(), min_sites=1)
    return replace(base, **change)  # type: ignore[arg-type]


def step_vector(seed: int = 7) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(N)
    return v * (STEP_NORM / np.linalg.norm(v))


def run(p: RoundPlan, step: np.ndarray, seed: int = 0):  # type: ignore[no-untyped-def]
    trainer = SteppingTrainer(step)
    start = np.zeros(N, np.float64)
    upd = local_update(p, trainer, start, ["a b c", "d e"], ["f g h"],
                       np.random.default_rng(seed))
    # the trainer is left at the round's start, not at the trained values
    assert np.array_equal(trainer.v, start.astype(np.float32))
    return upd


def clipped(step: np.ndarray, clip_norm: float) -> np.ndarray:
    return step * (clip_norm / np.linalg.norm(step))


def test_the_update_is_clipped() -> None:
    step = step_vector()
    upd = run(plan(clip_norm=0.5), step)
    assert upd.norm == pytest.approx(STEP_NORM)              # reported before clipping
    assert float(np.linalg.norm(upd.delta)) <= 0.5 * (1 + 1e-5)
    np.testing.assert_allclose(upd.delta, clipped(step, 0.5), atol=1e-6)
    # an update already inside the bound is sent as it is
    small = step * (0.1 / STEP_NORM)
    np.testing.assert_allclose(run(plan(clip_norm=0.5), small).delta, small, atol=1e-7)


def _residual_checks(residual: np.ndarray, std: float) -> None:
    """The residual is N(0, std^2) noise.  The seed is fixed, so the run is
    deterministic; the bounds are generous (the sample std of 20,000 values
    is within 0.5 % of the truth at one sigma, the mean within std/141)."""
    assert float(residual.std()) == pytest.approx(std, rel=0.05)
    assert abs(float(residual.mean())) < 5 * std / math.sqrt(N)
    # Gaussian tails, not a uniform or constant offset: about 4.6 % beyond 2 std
    beyond = float(np.mean(np.abs(residual) > 2 * std))
    assert 0.035 < beyond < 0.057


def test_site_noise_has_the_plan_scale() -> None:
    step = step_vector()
    p = plan(clip_norm=0.5, noise_multiplier=1.5)
    upd = run(p, step, seed=1)
    residual = upd.delta.astype(np.float64) - clipped(step, 0.5)
    _residual_checks(residual, 1.5 * 0.5)                 # z * C, all of it at this site
    # the noise is fresh for each round: another draw, another vector
    again = run(p, step, seed=2).delta
    assert not np.allclose(again, upd.delta)
    # and what leaves the site is the noised vector, not the clean one
    sent = plain_payload(upd)[:N]
    np.testing.assert_array_equal(sent, upd.delta)


def test_secure_aggregation_splits_the_noise_between_sites() -> None:
    """Under secure aggregation each of min_sites adds z*C/sqrt(min_sites):
    their sum carries z*C."""
    step = step_vector()
    p = plan(clip_norm=0.5, noise_multiplier=2.0, secure_aggregation=True, min_sites=4)
    upd = run(p, step, seed=3)
    _residual_checks(upd.delta.astype(np.float64) - clipped(step, 0.5), 2.0 * 0.5 / 2)


def test_no_noise_without_dp() -> None:
    step = step_vector()
    a, b = run(plan(), step, seed=1), run(plan(), step, seed=2)
    np.testing.assert_array_equal(a.delta, b.delta)


def test_uniform_weight_in_the_secure_payload_when_dp_is_on() -> None:
    """A data-dependent weight would let a site's influence exceed the clip
    bound the accountant assumes: with DP the weight is 1, whatever the
    tokens (with it off, the tokens)."""
    step = step_vector()
    noisy = plan(noise_multiplier=1.0, secure_aggregation=True, min_sites=2)
    for tokens in (10, 5000):
        trainer = SteppingTrainer(step, tokens=tokens)
        upd = local_update(noisy, trainer, np.zeros(N), ["a b"], ["c d"],
                           np.random.default_rng(0))
        vec = secagg_payload(upd, noisy)
        assert vec[N] == 1.0
        np.testing.assert_allclose(vec[:N], upd.delta, rtol=1e-6)
        assert secagg_payload(upd, replace(noisy, noise_multiplier=0.0))[N] == tokens


def test_a_start_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="values, the trainer has"):
        local_update(plan(), SteppingTrainer(step_vector()), np.zeros(N - 1), ["a"], ["b"],
                     np.random.default_rng(0))
