"""energy/weights.fit solves its least squares in plain Python (the daemon
does not import numpy); these pin it to numpy's lstsq on the same subsets."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime.energy.weights import MIN_WINDOWS, Weights, WindowSample, fit


def numpy_fit(samples: list[WindowSample]) -> Weights:
    """The fit as it was written with numpy (lstsq on every subset of the three
    columns, the best non-negative one by residual)."""
    if len(samples) < MIN_WINDOWS:
        return Weights()
    x = np.array([[s.seconds, s.prefill_tokens, s.decode_tokens] for s in samples], float)
    y = np.array([s.joules for s in samples], float)
    best: tuple[float, np.ndarray] | None = None
    for k in range(1, 4):
        for cols in itertools.combinations(range(3), k):
            coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(3)
            full[list(cols)] = coef
            residual = float(np.sum((x @ full - y) ** 2))
            if best is None or residual < best[0]:
                best = (residual, full)
    if best is None or best[1][1] + best[1][2] <= 0:
        return Weights()
    idle, pre, dec = (float(v) for v in best[1])
    return Weights(idle, pre or dec, dec or pre)


@pytest.mark.parametrize("case", ["mixed", "no prefill", "no decode", "idle only", "noisy"])
def test_fit_matches_numpy_lstsq(case: str) -> None:
    """Random windows, including a column of zeros (a rank-deficient subset)
    and noise that makes some subsets' coefficients negative.  Checked to
    fail when least_squares' back substitution drops the R[i][j] terms
    (the weights then differ by far more than 1e-9)."""
    rng = np.random.default_rng(sum(map(ord, case)))
    for _ in range(60):
        samples = []
        for _ in range(int(rng.integers(MIN_WINDOWS, 80))):
            secs = float(rng.uniform(0.005, 2.0))
            pre = 0 if case in ("no prefill", "idle only") else int(rng.integers(0, 800))
            dec = 0 if case in ("no decode", "idle only") else int(rng.integers(0, 100))
            joules = 12.0 * secs + 0.05 * pre + 0.4 * dec
            noise = 0.3 if case == "noisy" else 0.02
            samples.append(WindowSample(secs, pre, dec, joules * float(rng.normal(1, noise))))
        got, want = fit(samples), numpy_fit(samples)
        assert got.idle_watts == pytest.approx(want.idle_watts, rel=1e-9, abs=1e-12)
        assert got.prefill == pytest.approx(want.prefill, rel=1e-9, abs=1e-12)
        assert got.decode == pytest.approx(want.decode, rel=1e-9, abs=1e-12)
