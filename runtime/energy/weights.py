"""The attribution weights: idle power and joules per prefill and per decode
token, fitted by a non-negative least-squares regression over windows
(E ≈ idle_watts·Δt + prefill·P + decode·D).  Three unknowns: every subset of
them is solved in the least-squares sense and the best non-negative solution
wins, which is exact NNLS at this size.

Plain Python, no numpy: the fit runs in the daemon every REFIT_EVERY
windows, and importing numpy there would cost the serving process about
15 MB of resident memory for a 3x3 solve (benchmarks/rss.py measures it)."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


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
    rows = [(s.seconds, s.prefill_tokens, s.decode_tokens) for s in samples]
    y = [s.joules for s in samples]
    best: tuple[float, list[float]] | None = None
    for k in range(1, 4):
        for cols in itertools.combinations(range(3), k):
            coef = least_squares([[r[c] for c in cols] for r in rows], y)
            if coef is None or any(c < 0 for c in coef):
                continue
            full = [0.0, 0.0, 0.0]
            for c, v in zip(cols, coef, strict=True):
                full[c] = v
            residual = math.fsum((r[0] * full[0] + r[1] * full[1] + r[2] * full[2] - t) ** 2
                                 for r, t in zip(rows, y, strict=True))
            if best is None or residual < best[0]:
                best = (residual, full)
    if best is None or best[1][1] + best[1][2] <= 0:
        return fallback
    idle, pre, dec = best[1]
    # A token kind the fit priced at zero still costs something: keep the
    # split defined by borrowing the other kind's price.
    return Weights(idle, pre or dec, dec or pre)


RANK_TOLERANCE = 1e-10


def least_squares(x: Sequence[Sequence[float]], y: Sequence[float]) -> list[float] | None:
    """argmin |x·b - y| for a tall x of 1 to 3 columns, by modified
    Gram-Schmidt QR on unit-norm columns; None when the columns are
    (numerically) dependent.  A dependent subset spans the same space as a
    smaller one that `fit` tries too, with the same residual, so skipping
    it loses nothing (numpy's lstsq would return its minimum-norm answer)."""
    k = len(x[0])
    cols = [[row[j] for row in x] for j in range(k)]
    norms = [math.sqrt(math.fsum(v * v for v in col)) for col in cols]
    if min(norms) == 0.0:
        return None
    q = [[v / n for v in col] for col, n in zip(cols, norms, strict=True)]
    r = [[0.0] * k for _ in range(k)]
    for j in range(k):
        for i in range(j):
            r[i][j] = math.fsum(a * b for a, b in zip(q[i], q[j], strict=True))
            q[j] = [b - r[i][j] * a for a, b in zip(q[i], q[j], strict=True)]
        r[j][j] = math.sqrt(math.fsum(v * v for v in q[j]))
        if r[j][j] <= RANK_TOLERANCE:
            return None
        q[j] = [v / r[j][j] for v in q[j]]
    qty = [math.fsum(a * b for a, b in zip(qj, y, strict=True)) for qj in q]
    scaled = [0.0] * k
    for i in reversed(range(k)):
        scaled[i] = (qty[i] - math.fsum(r[i][j] * scaled[j] for j in range(i + 1, k))) / r[i][i]
    return [b / n for b, n in zip(scaled, norms, strict=True)]
