"""The energy accountant: meter windows, the engines' step logs, and the
attribution of every window's energy to the requests that ran in it.

Each window (`close_window`) reads the meter once and drains every engine's
step log (native/src/steplog.c: per step, each request's prefill and decode
tokens, and a record when a request ends).  `attribute()` splits the
window's energy: the dynamic part by token work, the idle part by each
request's time in the window, the rest idle energy.  A step counts in the
window in which it ended, so no token is counted twice or lost between
windows.  A request's figure is final once the window holding its end
record has closed; `final()` hands it over (once).

Nothing here sleeps or schedules: the service (service.py) decides when
windows close.  Time comes from `clock_ns` (CLOCK_MONOTONIC, the engine's
clock) and `wall` (for the carbon table), so tests drive both.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from runtime.energy.attribution import StepWork, Window, attribute
from runtime.energy.carbon import GridIntensity
from runtime.energy.meters import Reading
from runtime.energy.weights import Weights, WindowSample, fit
from runtime.native import StepRecord

log = logging.getLogger("hearth.energy")

# Records kept per engine between drains: a window of a second holds a few
# thousand at most (one per request per step); the ring absorbs a stalled
# loop for tens of seconds.
STEP_LOG_CAPACITY = 1 << 16
# Windows kept for the weights' regression, and how often it is refitted.
CALIBRATION_WINDOWS = 600
REFIT_EVERY = 30
# A final figure nobody collected (an embedding, a dropped stream) is kept
# this long.
FINAL_KEEP_S = 300.0
# A request with no record for this long lost its end record (ring overrun,
# engine closed): its figure is closed as it stands.
STALE_S = 600.0


class Meter(Protocol):
    def read(self) -> Reading: ...


class StepSource(Protocol):
    """What the accountant needs of an engine (NativeEngine has it)."""

    serial: int

    def enable_step_log(self, capacity: int) -> None: ...
    def drain_steps(self) -> tuple[list[StepRecord], int]: ...


@dataclass(frozen=True)
class RequestEnergy:
    joules: float
    source: str                 # the meter's: nvml, rapl, estimate (or a sum: nvml+rapl)
    co2e_grams: float = 0.0


@dataclass(frozen=True)
class WindowReport:
    start: float                # monotonic seconds
    end: float
    joules: float               # measured over the window
    idle_joules: float          # of which no request ran
    per_request: dict[str, float]
    per_model: dict[str, float]
    tokens: dict[str, int]      # per model: prefill + decode tokens in the window
    lost_records: int = 0

    @property
    def attributed(self) -> float:
        return sum(self.per_request.values()) + self.idle_joules


@dataclass
class _Request:
    model: str
    first: float                # its first step began (monotonic seconds)
    last_seen: float
    joules: float = 0.0
    grams: float = 0.0
    end: float | None = None    # its end record's time, once seen


@dataclass
class Totals:
    """Cumulative figures since start, for Prometheus."""

    joules: dict[str, float] = field(default_factory=dict)        # per model
    co2e_grams: dict[str, float] = field(default_factory=dict)    # per model
    idle_joules: float = 0.0
    joules_per_token: dict[str, float] = field(default_factory=dict)  # last window's
    windows: int = 0


def request_key(serial: int, request_id: int) -> str:
    """A request's key across engines (ids restart with every engine)."""
    return f"{serial}:{request_id}"


class Accountant:
    def __init__(self, meter: Meter, engines: Callable[[], Iterable[tuple[str, StepSource]]],
                 weights: Weights | None = None, grid: GridIntensity | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns,
                 wall: Callable[[], datetime] = datetime.now,
                 on_weights: Callable[[Weights], None] | None = None) -> None:
        self.meter, self.engines, self.weights = meter, engines, weights or Weights()
        self.grid = grid or GridIntensity.parse(0)
        self.clock_ns, self.wall, self.on_weights = clock_ns, wall, on_weights
        first = meter.read()
        self.source = str(first.source)
        self._last_joules = first.joules
        self._start = clock_ns() / 1e9
        self._enabled: dict[int, StepSource] = {}
        self._carry: list[tuple[str, int, StepRecord]] = []
        self._requests: dict[str, _Request] = {}
        self._final: dict[str, tuple[float, RequestEnergy]] = {}
        self._samples: deque[WindowSample] = deque(maxlen=CALIBRATION_WINDOWS)
        self.totals = Totals()

    @property
    def window_start(self) -> float:
        return self._start

    def _drain(self) -> tuple[list[tuple[str, int, StepRecord]], int]:
        records, lost = list(self._carry), 0
        self._carry = []
        seen = set()
        for model, engine in self.engines():
            seen.add(engine.serial)
            try:
                if engine.serial not in self._enabled:
                    engine.enable_step_log(STEP_LOG_CAPACITY)
                    self._enabled[engine.serial] = engine
                got, n_lost = engine.drain_steps()
            except Exception as exc:   # an engine closed between listing and draining
                log.debug("energy: engine %s of %s not drained: %s", engine.serial, model, exc)
                continue
            lost += n_lost
            records.extend((model, engine.serial, r) for r in got)
        for serial in set(self._enabled) - seen:
            del self._enabled[serial]
            prefix = f"{serial}:"
            for key in [k for k in self._requests if k.startswith(prefix)]:
                self._requests[key].end = self._start   # its engine is gone
        return records, lost

    def close_window(self) -> WindowReport:
        """Reads the meter, drains the step logs and splits the window's
        energy; closes the figures of requests that ended in it."""
        end = self.clock_ns() / 1e9
        reading = self.meter.read()
        joules = max(0.0, reading.joules - self._last_joules)
        self._last_joules = reading.joules
        records, lost = self._drain()
        if lost:
            log.warning("energy: %d step records were lost (the window loop fell behind); "
                        "their requests' token work is missing from the split", lost)
        window = Window(self._start, max(end, self._start), joules)

        steps: list[StepWork] = []
        tokens: dict[str, int] = {}
        prefill = decode = 0
        for model, serial, rec in records:
            t0, t1 = rec.t_start_ns / 1e9, rec.t_end_ns / 1e9
            if t1 > window.end:                 # ended after the meter was read
                self._carry.append((model, serial, rec))
                continue
            key = request_key(serial, rec.request_id)
            req = self._requests.get(key)
            if req is None:
                req = self._requests[key] = _Request(model, t0, t1)
            req.last_seen = max(req.last_seen, t1)
            if rec.finished:
                req.end = t1
                continue
            # By its end: clamping the start into the window counts it whole here.
            steps.append(StepWork(max(t0, window.start), max(t1, window.start),
                                  {key: (rec.n_prefill, rec.n_decode)}))
            tokens[model] = tokens.get(model, 0) + rec.n_prefill + rec.n_decode
            prefill += rec.n_prefill
            decode += rec.n_decode
        for req in self._requests.values():
            if req.end is None and window.end - req.last_seen > STALE_S:
                req.end = req.last_seen
        spans = {key: (req.first, req.end if req.end is not None else window.end)
                 for key, req in self._requests.items()}
        share = attribute(window, steps, spans, self.weights)

        grams_per_joule = self.grid.grams(1.0, self.wall())
        per_model: dict[str, float] = {}
        for key, j in share.per_request.items():
            req = self._requests[key]
            req.joules += j
            req.grams += j * grams_per_joule
            per_model[req.model] = per_model.get(req.model, 0.0) + j
        self._account(per_model, share.idle_joules, tokens, grams_per_joule)
        self._settle_ended(window.end)
        self._calibrate(WindowSample(window.seconds, prefill, decode, joules))
        self._start = window.end
        return WindowReport(window.start, window.end, joules, share.idle_joules,
                            dict(share.per_request), per_model, tokens, lost)

    def _account(self, per_model: dict[str, float], idle: float, tokens: dict[str, int],
                 grams_per_joule: float) -> None:
        t = self.totals
        for model, j in per_model.items():
            t.joules[model] = t.joules.get(model, 0.0) + j
            t.co2e_grams[model] = t.co2e_grams.get(model, 0.0) + j * grams_per_joule
            if tokens.get(model):
                t.joules_per_token[model] = j / tokens[model]
        t.idle_joules += idle
        t.windows += 1

    def _settle_ended(self, now: float) -> None:
        for key in [k for k, r in self._requests.items() if r.end is not None]:
            req = self._requests.pop(key)
            self._final[key] = (now, RequestEnergy(req.joules, self.source, req.grams))
        for key in [k for k, (t, _) in self._final.items() if now - t > FINAL_KEEP_S]:
            del self._final[key]

    def _calibrate(self, sample: WindowSample) -> None:
        self._samples.append(sample)
        if self.totals.windows % REFIT_EVERY:
            return
        fitted = fit(list(self._samples), fallback=self.weights)
        if fitted != self.weights:
            self.weights = fitted
            if self.on_weights is not None:
                self.on_weights(fitted)

    def final(self, serial: int, request_id: int) -> RequestEnergy | None:
        """A request's figure once the window of its end has closed (once)."""
        got = self._final.pop(request_key(serial, request_id), None)
        return got[1] if got else None

    def so_far(self, serial: int, request_id: int) -> RequestEnergy:
        """What a request has been attributed in closed windows (for one
        that failed or was cancelled: no final chunk waits on it)."""
        done = self.final(serial, request_id)
        if done is not None:
            return done
        req = self._requests.get(request_key(serial, request_id))
        return RequestEnergy(req.joules if req else 0.0, self.source, req.grams if req else 0.0)
