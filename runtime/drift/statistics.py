"""Two-sample statistics between live windows and a reference, vectorized
over many windows at once (calibration evaluates tens of thousands).

    ks_statistics   scalar signals: the Kolmogorov-Smirnov distance between
                    each window's empirical CDF and the reference's
    mean_shift      vector signals: W · d' Σ⁻¹ d, d the window mean minus the
                    reference mean, Σ the reference covariance (ridged)
    tail_p_values   (1 + #{null ≥ s}) / (M + 1): a valid p-value against M
                    null draws, never 0 (the observed statistic counts)
"""
from __future__ import annotations

import numpy as np

RIDGE = 1e-6   # relative ridge on the covariance: projected embeddings can be degenerate


def ks_statistics(windows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Exact KS distance sup_x |F_w(x) - F_r(x)| of each row of `windows`
    (n, W) against `reference` (K,), ties included.

    On each interval [r_b, r_b+1) where the reference ECDF is b/K, the window
    ECDF runs from (#w < r_b + #w == r_b)/W up to #w < r_b+1 / W, so the
    supremum is taken at those two ends; empty intervals (tied reference
    values) are skipped.
    """
    windows = np.atleast_2d(np.asarray(windows, dtype=np.float64))
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    n, w = windows.shape
    k = ref.size
    if k == 0 or w == 0:
        raise ValueError("ks_statistics: empty window or reference")
    right = np.searchsorted(ref, windows, side="right")          # #ref <= x, in 0..K
    left = np.searchsorted(ref, windows, side="left")            # #ref < x
    offsets = (np.arange(n) * (k + 1))[:, None]
    size = n * (k + 1)
    counts = np.bincount((right + offsets).ravel(), minlength=size).reshape(n, k + 1)
    equal = np.bincount((right + offsets)[left < right], minlength=size).reshape(n, k + 1)
    upper = np.cumsum(counts, axis=1) / w                        # F_w just below r_b+1
    lower = upper - (counts - equal) / w                         # F_w at r_b
    ref_cdf = np.arange(k + 1) / k
    steps = np.ones(k + 1, dtype=bool)                           # non-empty intervals
    steps[1:k] = ref[:-1] < ref[1:]
    dev = np.maximum(np.abs(upper - ref_cdf), np.abs(lower - ref_cdf))
    return np.max(dev[:, steps], axis=1)


def sliding_windows(values: np.ndarray, width: int, stride: int) -> np.ndarray:
    """Rows values[i : i + width] for i = width - 1, width - 1 + stride, … (ends)."""
    values = np.asarray(values)
    if values.shape[0] < width:
        return values[:0][None][:0]
    view = np.lib.stride_tricks.sliding_window_view(values, width, axis=0)
    picked = view[::stride]
    return np.moveaxis(picked, -1, 1) if values.ndim == 2 else picked


class MeanShift:
    """The reference's mean and inverse covariance, for mean-shift statistics."""

    def __init__(self, mean: np.ndarray, cov: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        cov = np.asarray(cov, dtype=np.float64)
        scale = max(float(np.trace(cov)) / max(cov.shape[0], 1), 1e-12)
        self.precision = np.linalg.inv(cov + RIDGE * scale * np.eye(cov.shape[0]))

    @classmethod
    def of(cls, reference: np.ndarray) -> MeanShift:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 2 or reference.shape[0] < 2:
            raise ValueError("MeanShift.of: need a (K >= 2, d) reference")
        return cls(reference.mean(axis=0), np.cov(reference, rowvar=False).reshape(
            reference.shape[1], reference.shape[1]))

    def statistics(self, window_means: np.ndarray, width: int) -> np.ndarray:
        d = np.atleast_2d(window_means) - self.mean
        return width * np.einsum("ij,jk,ik->i", d, self.precision, d)


def window_means(values: np.ndarray, width: int, stride: int) -> np.ndarray:
    """Means of the windows `sliding_windows` would give, by cumulative sums."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < width:
        return np.zeros((0, *values.shape[1:]))
    csum = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
    ends = np.arange(width, values.shape[0] + 1, stride)
    return (csum[ends] - csum[ends - width]) / width


def tail_p_values(observed: np.ndarray, null_sorted: np.ndarray) -> np.ndarray:
    """(1 + #{null >= s}) / (M + 1) for each observed s; `null_sorted` ascending."""
    m = null_sorted.size
    at_least = m - np.searchsorted(null_sorted, np.asarray(observed, dtype=np.float64),
                                   side="left")
    return (1.0 + at_least) / (m + 1.0)
