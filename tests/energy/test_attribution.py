"""Attribution conserves each window's energy and follows the token work."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.energy.attribution import StepWork, Window, attribute
from runtime.energy.weights import Weights, WindowSample, fit


def test_a_window_splits_exactly_into_requests_and_idle() -> None:
    """Checked that it can fail: dropping the idle remainder, or counting a
    straddling step whole, breaks the sum."""
    weights = Weights(idle_watts=10.0, prefill=0.5, decode=2.0)
    window = Window(0.0, 2.0, joules=50.0)             # 20 J idle, 30 J dynamic
    steps = [StepWork(0.1, 0.2, {"a": (40, 0)}),
             StepWork(0.2, 0.3, {"a": (0, 1), "b": (20, 0)}),
             StepWork(1.9, 2.1, {"a": (0, 1), "b": (0, 1)})]   # half inside
    spans = {"a": (0.1, 2.5), "b": (0.2, 1.0)}
    share = attribute(window, steps, spans, weights)
    assert share.total == pytest.approx(50.0, rel=1e-12)
    work_a, work_b = 0.5 * 40 + 2.0 * 1 + 0.5 * 2.0, 0.5 * 20 + 0.5 * 2.0
    covered = 2.0 - 0.1
    idle_a = 20.0 * covered / 2.0 * 1.9 / (1.9 + 0.8)
    assert share.per_request["a"] == pytest.approx(30 * work_a / (work_a + work_b) + idle_a)
    assert share.idle_joules == pytest.approx(20.0 * 0.1 / 2.0)


def test_a_window_with_no_request_is_all_idle() -> None:
    share = attribute(Window(0.0, 1.0, 7.0), [], {}, Weights(idle_watts=3.0))
    assert share.per_request == {} and share.idle_joules == pytest.approx(7.0)


def test_many_random_windows_conserve_within_a_part_per_million() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        t0 = float(rng.uniform(0, 100))
        window = Window(t0, t0 + float(rng.uniform(0.5, 3)), float(rng.uniform(0, 200)))
        steps = []
        for _ in range(int(rng.integers(0, 30))):
            s = float(rng.uniform(window.start - 0.2, window.end))
            steps.append(StepWork(s, s + float(rng.uniform(0, 0.3)),
                                  {f"r{int(rng.integers(0, 5))}": (int(rng.integers(0, 50)),
                                                                    int(rng.integers(0, 3)))}))
        spans = {f"r{i}": (float(rng.uniform(t0 - 1, t0 + 1)), float(rng.uniform(t0, t0 + 4)))
                 for i in range(5)}
        share = attribute(window, steps, spans,
                          Weights(float(rng.uniform(0, 50)), 0.3, 1.7))
        assert share.total == pytest.approx(window.joules, rel=1e-6, abs=1e-9)
        assert all(j >= 0 for j in share.per_request.values()) and share.idle_joules >= -1e-9


def test_the_regression_recovers_idle_power_and_token_prices() -> None:
    """Windows generated from known weights (with 1% noise) give them back."""
    rng = np.random.default_rng(1)
    truth = Weights(idle_watts=12.0, prefill=0.05, decode=0.4)
    samples = []
    for _ in range(60):
        secs, pre, dec = rng.uniform(1, 2), rng.integers(0, 800), rng.integers(0, 100)
        joules = truth.idle_watts * secs + truth.prefill * pre + truth.decode * dec
        samples.append(WindowSample(secs, pre, dec, joules * rng.normal(1, 0.01)))
    got = fit(samples)
    assert got.idle_watts == pytest.approx(12.0, rel=0.05)
    assert got.prefill == pytest.approx(0.05, rel=0.1)
    assert got.decode == pytest.approx(0.4, rel=0.05)
    assert fit(samples[:3]) == Weights()                 # too few windows: fallback
