"""Drift statistics against brute-force definitions."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.drift.statistics import (
    MeanShift,
    ks_statistics,
    sliding_windows,
    tail_p_values,
    window_means,
)


def brute_ks(window: np.ndarray, reference: np.ndarray) -> float:
    """sup_x |F_w(x) - F_r(x)|: at every pooled value and just below it."""
    diffs = []
    for x in np.unique(np.concatenate([window, reference])):
        diffs.append(abs((window <= x).mean() - (reference <= x).mean()))
        diffs.append(abs((window < x).mean() - (reference < x).mean()))
    return float(max(diffs))


@pytest.mark.parametrize("discrete", [False, True])
def test_ks_matches_the_definition(discrete: bool) -> None:
    """Checked that it can fail: dropping the tie mask (`steps`) or the
    count of window values equal to a reference value fails it."""
    rng = np.random.default_rng(3)
    draw = ((lambda n: rng.integers(0, 4, n).astype(float)) if discrete
            else (lambda n: rng.normal(size=n)))
    reference = draw(300)
    windows = np.stack([draw(50) + (0.3 if i % 2 else 0.0) for i in range(12)])
    got = ks_statistics(windows, reference)
    want = [brute_ks(w, reference) for w in windows]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_ks_of_the_reference_itself_is_zero_and_of_a_disjoint_sample_is_one() -> None:
    ref = np.arange(100.0)
    assert ks_statistics(ref[None], ref)[0] == pytest.approx(0.0)
    assert ks_statistics((ref + 1000)[None], ref)[0] == pytest.approx(1.0)


def test_windows_and_their_means() -> None:
    values = np.arange(20.0)
    rows = sliding_windows(values, 5, 3)
    assert rows[0].tolist() == [0, 1, 2, 3, 4] and rows[1].tolist() == [3, 4, 5, 6, 7]
    np.testing.assert_allclose(window_means(values, 5, 3), rows.mean(axis=1))
    vecs = np.random.default_rng(0).normal(size=(20, 3))
    np.testing.assert_allclose(window_means(vecs, 5, 3),
                               sliding_windows(vecs, 5, 3).mean(axis=1))


def test_tail_p_values_count_the_observed_statistic() -> None:
    """(1 + #{null >= s}) / (M + 1): never 0, 1 below every null draw.
    Checked that it can fail: (#{null >= s}) / M gives 0 for the first case."""
    null = np.sort(np.arange(1.0, 100.0))        # M = 99
    p = tail_p_values(np.array([1000.0, 50.0, -1.0]), null)
    assert p[0] == pytest.approx(1 / 100)
    assert p[1] == pytest.approx((1 + 50) / 100)
    assert p[2] == pytest.approx(1.0)


def test_mean_shift_is_hotelling_like() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2000, 4)) * [1, 2, 3, 4]
    ms = MeanShift.of(ref)
    # A shift of one standard deviation in one coordinate, over a window of 100.
    stat = ms.statistics(ms.mean + np.array([0, 0, 3.0, 0]), 100)[0]
    assert stat == pytest.approx(100.0, rel=0.1)
