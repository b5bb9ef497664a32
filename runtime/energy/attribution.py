"""Splitting one measured window of energy among the requests that ran in it.

The engine knows which requests took part in each step (one `llama_decode`)
and how many prefill and decode tokens each contributed.  A window's energy
E over [t0, t1) is split as:

    idle     = min(E, idle_watts × (t1 - t0))
    dynamic  = E - idle
    dynamic  → requests in proportion to their weighted token work in the
               window (prefill and decode tokens weighted apart); a step
               that straddles a window edge counts by its overlap
    idle     → the part of the window covered by at least one request goes
               to those requests in proportion to their time in it; the rest
               (nobody running) is reported as idle energy

so the per-request figures plus the idle remainder add up to E exactly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.energy.weights import Weights


@dataclass(frozen=True)
class StepWork:
    """One engine step: when it ran, and each request's (prefill, decode) tokens."""

    start: float
    end: float
    tokens: Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    joules: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class WindowShare:
    per_request: dict[str, float]
    idle_joules: float            # energy of the window that no request ran in
    prefill_tokens: int
    decode_tokens: int

    @property
    def total(self) -> float:
        return sum(self.per_request.values()) + self.idle_joules


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _union_length(spans: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def attribute(window: Window, steps: Sequence[StepWork],
              spans: Mapping[str, tuple[float, float]], weights: Weights) -> WindowShare:
    """`spans`: each request's [admitted, finished) time (open ends clipped)."""
    seconds = max(window.seconds, 1e-12)
    idle = min(window.joules, max(weights.idle_watts, 0.0) * seconds)
    dynamic = window.joules - idle

    work: dict[str, float] = {}
    prefill = decode = 0.0
    for step in steps:
        length = step.end - step.start
        part = (1.0 if length <= 0 else
                _overlap(step.start, step.end, window.start, window.end) / length)
        if part <= 0:
            continue
        for rid, (p, d) in step.tokens.items():
            work[rid] = work.get(rid, 0.0) + part * (weights.prefill * p + weights.decode * d)
            prefill += part * p
            decode += part * d
    shares = dict.fromkeys(set(work) | set(spans), 0.0)
    total_work = sum(work.values())
    unattributed = 0.0
    if total_work > 0:
        for rid, w in work.items():
            shares[rid] += dynamic * w / total_work
    else:
        unattributed += dynamic

    clipped = {rid: (max(s, window.start), min(e, window.end)) for rid, (s, e) in spans.items()}
    clipped = {rid: se for rid, se in clipped.items() if se[1] > se[0]}
    covered = _union_length(list(clipped.values()))
    time_in = {rid: e - s for rid, (s, e) in clipped.items()}
    total_time = sum(time_in.values())
    idle_covered = idle * min(1.0, covered / seconds)
    if total_time > 0:
        for rid, t in time_in.items():
            shares[rid] += idle_covered * t / total_time
    else:
        idle_covered = 0.0
    unattributed += idle - idle_covered
    return WindowShare({r: j for r, j in shares.items() if j > 0 or r in work},
                       unattributed, round(prefill), round(decode))
