"""Differential privacy for federated rounds (DP-FedAvg).

Each site clips its update to L2 norm C and the aggregate gets Gaussian noise
of standard deviation z*C (z: the noise multiplier).  One round is then a
sampled Gaussian mechanism with sampling rate q (the share of sites taking
part; 1 when all do).  The accountant composes rounds in Rényi DP (RDP) and
converts to (epsilon, delta):

* RDP of the sampled Gaussian mechanism at order alpha, per Mironov, Talwar
  and Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"
  (2019): an exact finite sum for integer alpha, and the two-sided series
  with erfc terms for fractional alpha (their Section 3.3);
* conversion to (epsilon, delta) by Balle et al., "Hypothesis testing
  interpretations and Rényi differential privacy" (2020), Theorem 21, which
  is tighter than Mironov's original log(1/delta)/(alpha-1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import FailedPrecondition, InvalidArgument

# Orders searched for the best conversion: fine steps where the optimum
# usually lies, then integers.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128.0, 256.0])


def clip(update: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """Scales `update` down to L2 norm max_norm if it is longer; returns the
    clipped update and its norm before clipping."""
    norm = float(np.linalg.norm(update))
    if not math.isfinite(norm):
        raise InvalidArgument("update: contains NaN or infinity")
    if norm > max_norm > 0:
        return update * (max_norm / norm), norm
    return update, norm


def gaussian_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, std, size=shape).astype(np.float32)


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) - exp(b)) for a >= b."""
    if b == -math.inf:
        return a
    if a <= b:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def _log_erfc(x: float) -> float:
    r = math.erfc(x)
    if r > 0.0:
        return math.log(r)
    # Asymptotic expansion where erfc underflows (x > ~26).
    return (-x * x - math.log(x) - 0.5 * math.log(math.pi)
            + math.log1p(-1 / (2 * x * x) + 3 / (4 * x ** 4)))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    total = -math.inf
    for k in range(alpha + 1):
        log_binom = math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        term = (log_binom + k * math.log(q) + (alpha - k) * math.log1p(-q)
                + (k * k - k) / (2 * sigma * sigma))
        total = _log_add(total, term)
    return total


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """The series of Mironov et al. (2019), Section 3.3, split at z0 where
    the two Gaussians' densities cross; terms alternate in sign once
    i > alpha, so positive and negative parts are summed in log space."""
    z0 = sigma * sigma * math.log(1 / q - 1) + 0.5
    log_a0 = log_a1 = -math.inf
    # binom(alpha, i), built up term by term in log space (it shrinks like
    # i^-(alpha+1) and its sign flips once i > alpha + 1).
    log_coef, positive = 0.0, True
    i = 0
    while True:
        if i > 0:
            factor = (alpha - i + 1) / i
            if factor == 0:  # integer alpha: the sum has ended
                return _log_add(log_a0, log_a1)
            log_coef += math.log(abs(factor))
            positive = positive == (factor > 0)
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma * sigma) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1
        if positive:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            return _log_add(log_a0, log_a1)


def rdp_sampled_gaussian(q: float, noise_multiplier: float, alpha: float) -> float:
    """RDP at order alpha of one sampled Gaussian mechanism step."""
    if q == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if q == 1.0:
        return alpha / (2 * noise_multiplier ** 2)
    if float(alpha).is_integer():
        return _log_a_int(q, noise_multiplier, int(alpha)) / (alpha - 1)
    return _log_a_frac(q, noise_multiplier, alpha) / (alpha - 1)


def epsilon_from_rdp(rdp: Sequence[float], orders: Sequence[float], delta: float
                     ) -> tuple[float, float]:
    """(epsilon, best order) for the given delta (Balle et al. 2020)."""
    best = (math.inf, math.nan)
    for r, a in zip(rdp, orders, strict=True):
        if a <= 1 or not math.isfinite(r):
            continue
        eps = r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        if eps < best[0]:
            best = (max(0.0, eps), a)
    return best


@dataclass
class PrivacyAccountant:
    """Composes rounds; refuses one that would exceed the budget."""

    delta: float
    epsilon_budget: float = math.inf
    orders: tuple[float, ...] = DEFAULT_ORDERS
    rdp: list[float] = field(default_factory=list)
    rounds: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.delta < 1:
            raise InvalidArgument(f"delta: must be in (0, 1), got {self.delta}")
        if not self.rdp:
            self.rdp = [0.0] * len(self.orders)

    @staticmethod
    def _step(q: float, z: float, orders: Sequence[float], rounds: int) -> list[float]:
        if not 0 <= q <= 1:
            raise InvalidArgument(f"sampling rate: must be in [0, 1], got {q}")
        if z < 0:
            raise InvalidArgument(f"noise multiplier: must be >= 0, got {z}")
        return [rounds * rdp_sampled_gaussian(q, z, a) for a in orders]

    def epsilon(self) -> float:
        if not any(self.rdp):
            return 0.0  # nothing released yet
        return epsilon_from_rdp(self.rdp, self.orders, self.delta)[0]

    def epsilon_after(self, sampling_rate: float, noise_multiplier: float,
                      rounds: int = 1) -> float:
        step = self._step(sampling_rate, noise_multiplier, self.orders, rounds)
        total = [a + b for a, b in zip(self.rdp, step, strict=True)]
        return epsilon_from_rdp(total, self.orders, self.delta)[0]

    def spend(self, sampling_rate: float, noise_multiplier: float, rounds: int = 1) -> float:
        """Records `rounds` rounds and returns the epsilon spent so far; a
        round that would exceed the budget is refused and not recorded."""
        after = self.epsilon_after(sampling_rate, noise_multiplier, rounds)
        if after > self.epsilon_budget:
            raise FailedPrecondition(
                f"privacy budget: this round would bring epsilon to {after:.3f}, above the "
                f"budget of {self.epsilon_budget:g} (delta {self.delta:g})")
        step = self._step(sampling_rate, noise_multiplier, self.orders, rounds)
        self.rdp = [a + b for a, b in zip(self.rdp, step, strict=True)]
        self.rounds += rounds
        return after
