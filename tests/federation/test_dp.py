"""Clipping, noise and the RDP accountant."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.federation.dp import (
    PrivacyAccountant,
    _log_a_frac,
    _log_a_int,
    clip,
    rdp_sampled_gaussian,
)

OPACUS_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def test_published_value_sampled_gaussian() -> None:
    """Opacus' accountant test: noise 1.5, sampling rate 0.04, 2250 steps,
    delta 1e-5, its default orders: epsilon = 7.32911117143 (RDP with the
    Balle et al. 2020 conversion; fractional orders decide the optimum)."""
    acc = PrivacyAccountant(delta=1e-5, orders=OPACUS_ORDERS)
    assert acc.spend(0.04, 1.5, int(90 / 0.04)) == pytest.approx(7.32911117143, abs=1e-8)


def test_full_participation_is_the_gaussian_mechanism() -> None:
    # Mironov 2017, Proposition 7: alpha / (2 sigma^2).
    assert rdp_sampled_gaussian(1.0, 2.0, 8.0) == pytest.approx(1.0)
    # The integer and fractional series agree on integer orders.
    for alpha in (2, 3, 7):
        assert _log_a_frac(0.1, 1.3, float(alpha)) == pytest.approx(_log_a_int(0.1, 1.3, alpha),
                                                                    rel=1e-9)


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    acc = PrivacyAccountant(delta=1e-6)
    e1 = acc.epsilon_after(0.5, 1.0, 1)
    e10 = acc.epsilon_after(0.5, 1.0, 10)
    assert 0 < e1 < e10
    assert acc.epsilon_after(0.5, 2.0, 10) < e10
    assert acc.epsilon() == 0.0


def test_the_budget_is_never_exceeded() -> None:
    acc = PrivacyAccountant(delta=1e-5, epsilon_budget=8.0)
    spent = []
    with pytest.raises(FailedPrecondition, match="privacy budget"):
        for _ in range(1000):
            spent.append(acc.spend(1.0, 2.0))
    assert len(spent) > 1 and spent[-1] <= 8.0 < acc.epsilon_after(1.0, 2.0)
    assert acc.rounds == len(spent) and acc.epsilon() == pytest.approx(spent[-1])


def test_bad_parameters() -> None:
    with pytest.raises(InvalidArgument, match="delta"):
        PrivacyAccountant(delta=0.0)
    acc = PrivacyAccountant(delta=1e-5)
    with pytest.raises(InvalidArgument, match="sampling rate"):
        acc.spend(1.5, 1.0)
    with pytest.raises(InvalidArgument, match="noise multiplier"):
        acc.spend(0.5, -1.0)
    assert math.isinf(acc.epsilon_after(1.0, 0.0))


def test_clip() -> None:
    v = np.array([3.0, 4.0], dtype=np.float32)
    clipped, norm = clip(v, 1.0)
    assert norm == pytest.approx(5.0) and np.linalg.norm(clipped) == pytest.approx(1.0)
    same, _ = clip(v, 10.0)
    assert same is v
    with pytest.raises(InvalidArgument, match="NaN"):
        clip(np.array([np.nan], dtype=np.float32), 1.0)
