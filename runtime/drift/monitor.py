"""One model version's drift monitor: collect a reference, then watch.

    monitor = DriftMonitor(DriftSettings(), version="gemma@3")
    for obs in observations:            # one per sampled request
        status = monitor.observe(obs)   # a DriftStatus every `stride` requests
        if status and status.alarm: ...

Live observations are held in a bounded window in memory only; what may be
persisted is `monitor.aggregate()`.  Calibration runs once, when the
reference is complete (about a second of CPU at the defaults): callers on an
event loop hand `observe` to a worker thread.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from runtime.drift.calibrate import VECTOR, Calibration, calibrate, window_statistics
from runtime.drift.reference import ReferenceAggregate, ReferenceData
from runtime.drift.signals import BY_NAME, DEFAULT, Observation, SignalKind
from runtime.drift.statistics import tail_p_values
from runtime.errors import ConfigError, FailedPrecondition


@dataclass(frozen=True)
class DriftSettings:
    reference_size: int = 500         # K: first requests of a version form its reference
    window: int = 200                 # W: live requests compared against it
    stride: int = 10                  # evaluate every this many requests
    ert_requests: int = 10_000        # expected requests between false alarms
    signals: tuple[str, ...] = DEFAULT
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.signals if s not in BY_NAME]
        if unknown:
            raise ConfigError(f"drift.signals: unknown {unknown}; known: {sorted(BY_NAME)}")
        if not self.signals:
            raise ConfigError("drift.signals: at least one signal")
        for name, low in (("reference_size", 20), ("window", 10), ("stride", 1),
                          ("ert_requests", 100)):
            if getattr(self, name) < low:
                raise ConfigError(f"drift.{name}: must be >= {low}, got {getattr(self, name)}")
        if self.window > self.reference_size:
            raise ConfigError("drift.window: must not exceed drift.reference_size")

    @property
    def scalar_signals(self) -> list[str]:
        return [s for s in self.signals if BY_NAME[s].kind is SignalKind.SCALAR]

    @property
    def uses_vector(self) -> bool:
        return VECTOR in self.signals


@dataclass(frozen=True)
class SignalStatus:
    statistic: float
    p_value: float


@dataclass(frozen=True)
class DriftStatus:
    version: str
    phase: str                              # "reference" or "watching"
    reference_size: int
    observed: int                           # observations since the reference was complete
    window: int
    threshold: float
    signals: dict[str, SignalStatus] = field(default_factory=dict)
    alarm: bool = False
    alarm_at: int | None = None             # `observed` when the current alarm began


class DriftMonitor:
    def __init__(self, settings: DriftSettings, version: str,
                 reference: ReferenceAggregate | None = None) -> None:
        self.settings = settings
        self.version = version
        self._collecting: list[Observation] = []
        self._window: deque[Observation] = deque(maxlen=settings.window)
        self._reference: ReferenceData | None = None
        self._calibration: Calibration | None = None
        self._observed = 0
        self._alarm_at: int | None = None
        self._last_crossing = 0
        self._last = self._status({})
        if reference is not None:
            self._install(ReferenceData.from_aggregate(reference, settings.seed))

    # -- feeding ---------------------------------------------------------
    def observe(self, obs: Observation) -> DriftStatus | None:
        self._check(obs)
        if self._reference is None:
            self._collecting.append(obs)
            if len(self._collecting) >= self.settings.reference_size:
                self._install(ReferenceData.of(self._collecting, self.settings.scalar_signals,
                                               self.settings.uses_vector))
                self._collecting = []
            return None
        self._window.append(obs)
        self._observed += 1
        if len(self._window) < self.settings.window or self._observed % self.settings.stride:
            return None
        self._last = self._evaluate()
        return self._last

    def reset(self) -> None:
        """Accept the current traffic as the new reference: the live window
        seeds it, the next requests complete it."""
        self._collecting = list(self._window)
        self._window.clear()
        self._reference = None
        self._calibration = None
        self._observed = 0
        self._alarm_at = None
        self._last = self._status({})

    # -- reading ---------------------------------------------------------
    def status(self) -> DriftStatus:
        """The last evaluation's statistics and alarm, with the counts as of now."""
        return self._status(self._last.signals, self._last.alarm)

    def aggregate(self) -> ReferenceAggregate:
        if self._reference is None:
            raise FailedPrecondition(f"drift: {self.version} has no complete reference yet")
        return self._reference.aggregate()

    # -- inside ----------------------------------------------------------
    def _check(self, obs: Observation) -> None:
        missing = [s for s in self.settings.scalar_signals if s not in obs.scalars]
        if missing or (self.settings.uses_vector and obs.vector is None):
            raise ValueError(f"drift observation lacks {missing or [VECTOR]}")

    def _install(self, reference: ReferenceData) -> None:
        s = self.settings
        self._reference = reference
        self._calibration = calibrate(reference, s.window, s.stride, s.ert_requests, s.seed)
        self._last = self._status({})

    def _evaluate(self) -> DriftStatus:
        assert self._reference is not None and self._calibration is not None
        live = ReferenceData.of(list(self._window), self.settings.scalar_signals,
                                self.settings.uses_vector)
        stats = window_statistics(live, self._reference, self.settings.window,
                                  self.settings.window)
        signals = {name: SignalStatus(float(v[-1]), float(tail_p_values(
            v[-1:], self._calibration.nulls[name])[0])) for name, v in stats.items()}
        # An alarm holds for one window after the last crossing (the rule
        # calibration counted onsets by), so a flickering statistic is one alarm.
        if min(s.p_value for s in signals.values()) <= self._calibration.threshold:
            self._last_crossing = self._observed
            if self._alarm_at is None:
                self._alarm_at = self._observed
        elif (self._alarm_at is not None
              and self._observed - self._last_crossing > self.settings.window):
            self._alarm_at = None
        return self._status(signals, self._alarm_at is not None)

    def _status(self, signals: dict[str, SignalStatus], alarm: bool = False) -> DriftStatus:
        ref = self._reference
        return DriftStatus(
            version=self.version, phase="reference" if ref is None else "watching",
            reference_size=ref.size if ref is not None else len(self._collecting),
            observed=self._observed, window=len(self._window),
            threshold=self._calibration.threshold if self._calibration else float("nan"),
            signals=signals, alarm=alarm, alarm_at=self._alarm_at)


def observation(scalars: dict[str, float], vector: np.ndarray | None = None) -> Observation:
    return Observation(dict(scalars), vector)
