"""The attribution weights: idle power and joules per prefill and per decode
token, fitted by a non-negative least-squares regression over windows
(E ≈ idle_watts·Δt + prefill·P + decode·D).  Three unknowns: every subset of
them is solved in the least-squares sense and the best non-negative solution
wins, which is exact NNLS at this size."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Weights:
    idle_watts: float = 0.0
    prefill: float = 1.0        # J per prefill token (only the ratio matters to the split)
    decode: float = 1.0         # J per decode token

    def to_json(self) -> dict[str, float]:
        return {"idle_watts": self.idle_watts, "prefill": self.prefill, "decode": self.decode}


@dataclass(frozen=True)
class WindowSample:
    seconds: float
    prefill_tokens: float
    decode_tokens: float
    joules: float


MIN_WINDOWS = 8


def fit(samples: Sequence[WindowSample], fallback: Weights = Weights()) -> Weights:
    """The fitted weights, or `fallback` when the windows cannot separate
    the three (too few, or no variety in the work)."""
    if len(samples) < MIN_WINDOWS:
        return fallback
    x = np.array([[s.seconds, s.prefill_tokens, s.decode_tokens] for s in samples], float)
    y = np.array([s.joules for s in samples], float)
    best: tuple[float, np.ndarray] | None = None
    for k in range(1, 4):
        for cols in itertools.combinations(range(3), k):
            sub = x[:, cols]
            coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(3)
            full[list(cols)] = coef
            residual = float(np.sum((x @ full - y) ** 2))
            if best is None or residual < best[0]:
                best = (residual, full)
    if best is None or best[1][1] + best[1][2] <= 0:
        return fallback
    idle, pre, dec = (float(v) for v in best[1])
    # A token kind the fit priced at zero still costs something: keep the
    # split defined by borrowing the other kind's price.
    return Weights(idle, pre or dec, dec or pre)
