"""The daemon's drift watch: one monitor per (model, adapter), fed from
RequestFinished events off the event loop.

    service = DriftService(config.drift, events, store, audit)
    core.drift_sample = service.should_sample   # which requests carry signals
    service.start()                              # on the event loop: reload aggregates
    ...
    service.status("gemma")                      # hearth drift status, Models.Get
    service.reset("gemma", actor="uid:0")        # hearth drift reset (admin)
    service.close()

The event handler only queues the request's signals (a bounded queue: when
the worker falls behind, events are dropped and counted, never waited for).
The worker thread turns them into observations, feeds the monitor (which
calibrates on the worker once its reference is complete), seals the
reference's aggregate into the store (kind "drift") and, when an alarm
begins, publishes DriftDetected on the event loop and records it in the
audit log.  Nothing per request is ever written.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from runtime.config import DriftConfig
from runtime.drift.monitor import DriftMonitor, DriftSettings, DriftStatus
from runtime.drift.reference import ReferenceAggregate
from runtime.drift.signals import BY_NAME, Observation, SignalKind, projection
from runtime.errors import IntegrityError, NotFound, Unavailable
from runtime.events import DriftDetected, EventBus, RequestFinished
from runtime.storage.store import Kind

log = logging.getLogger("hearth.drift")

STORE_KIND = Kind.DRIFT
AuditSink = Callable[[str, dict[str, Any]], None]


def version_of(model: str, adapter: str) -> str:
    """The key of a monitor: the model, and the adapter it served under."""
    return f"{model}@{adapter}" if adapter else model


def settings_of(cfg: DriftConfig, seed: int = 0) -> DriftSettings:
    """The monitor's settings from [drift]; an unknown signal is a ConfigError."""
    return DriftSettings(reference_size=cfg.reference_size, window=cfg.window,
                         stride=cfg.stride, ert_requests=cfg.ert_requests,
                         signals=tuple(cfg.signals), seed=seed)


class Projector:
    """The fixed, seeded projection of pooled embeddings, one matrix per
    input size (a model's n_embd)."""

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self._by_dim: dict[int, np.ndarray] = {}

    def __call__(self, pool: tuple[float, ...]) -> np.ndarray:
        x = np.asarray(pool, dtype=np.float64)
        m = self._by_dim.get(x.size)
        if m is None:
            m = self._by_dim[x.size] = projection(x.size, min(self.dims, x.size))
        return x @ m


def observation_of(event: RequestFinished, scalar_names: list[str], use_vector: bool,
                   project: Projector) -> Observation | None:
    """The monitor's view of a finished request, or None when a signal it
    watches is missing (no prompt position scored, say)."""
    d = event.drift
    if d is None:
        return None
    values = {"prompt_nll": d.prompt_nll, "first_token_entropy": d.first_token_entropy,
              "completion_tokens": float(event.completion_tokens),
              "finish_stop": 1.0 if event.finish_reason == "stop" else 0.0}
    scalars: dict[str, float] = {}
    for name in scalar_names:
        value = values.get(name)
        if value is None:
            return None
        scalars[name] = float(value)
    vector = None
    if use_vector:
        if not d.prompt_pool:
            return None
        vector = project(d.prompt_pool)
    return Observation(scalars, vector)


@dataclass
class _Watch:
    model: str
    monitor: DriftMonitor
    observed: int = 0          # requests fed since the daemon started


@dataclass
class _Command:
    """Work for the worker, in order with the observations: a reset (of a
    model's monitors) or, with model "", only a sync point."""

    model: str
    done: threading.Event
    versions: list[str] | None = None


class DriftService:
    def __init__(self, cfg: DriftConfig, events: EventBus, store: Any = None,
                 audit: AuditSink | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.settings = settings_of(cfg, seed)
        self.events = events
        self.store = store
        self.audit = audit
        self.dropped = 0
        self._sampler = random.Random(seed)
        self._project = Projector(cfg.embedding_dims)
        self._queue: queue.Queue[RequestFinished | _Command | None] = queue.Queue(cfg.queue)
        self._watches: dict[str, _Watch] = {}          # the worker's alone
        self._stored: dict[str, ReferenceAggregate] = {}
        # What readers see: the worker publishes each monitor's status after
        # every observation, so a reader never waits for a calibration.
        self._lock = threading.Lock()
        self._snapshots: dict[str, tuple[str, DriftStatus, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        events.subscribe(self.on_request, RequestFinished)

    # -- the request path (event loop) -------------------------------------
    def should_sample(self, model: str) -> bool:
        return self._sampler.random() < self.cfg.sample_fraction

    def on_request(self, event: RequestFinished) -> None:
        if event.drift is None or event.status != "ok":
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    # -- lifecycle ---------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reloads the sealed reference aggregates and starts the worker."""
        self._loop = loop
        self._stored = self._load_aggregates()
        self._thread = threading.Thread(target=self._work, name="hearth-drift", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Blocks until every queued event has been observed (tests, CLI)."""
        self._command("", timeout)

    def _command(self, model: str, timeout: float) -> list[str]:
        cmd = _Command(model, threading.Event())
        self._queue.put(cmd, timeout=timeout)
        if not cmd.done.wait(timeout):
            raise Unavailable("drift: the drift worker did not answer in time")
        return cmd.versions or []

    # -- reading -----------------------------------------------------------
    def status(self, model: str = "") -> list[dict[str, Any]]:
        """Summaries (JSON-ready) of every monitor, or those of one model."""
        with self._lock:
            snaps = sorted(self._snapshots.items())
        return [summary(status, owner, observed) for key, (owner, status, observed) in snaps
                if not model or owner == model or key == model]

    def statuses(self) -> list[tuple[str, DriftStatus, int]]:
        """(version, status, observed) of every monitor, for the metrics."""
        with self._lock:
            return [(key, status, observed)
                    for key, (_, status, observed) in self._snapshots.items()]

    def reset(self, model: str, actor: str = "", timeout: float = 60.0) -> list[str]:
        """Accepts the current traffic of `model` (every version of it, or the
        one named model@adapter) as the new reference; audited.  Returns the
        versions reset.  Blocks until the worker has done it: call it off
        the event loop."""
        keys = self._command(model, timeout)
        if not keys:
            raise NotFound(f"drift: no monitor for model {model!r}")
        if self.audit is not None:
            self.audit("drift_reset", {"model": model, "versions": keys, "actor": actor})
        log.info("drift reference reset for %s by %s", ", ".join(keys), actor or "?")
        return keys

    # -- the worker --------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _Command):
                if item.model:
                    item.versions = self._reset(item.model)
                item.done.set()
                continue
            try:
                self._observe(item)
            except Exception:   # one bad event must not stop the watch
                log.exception("drift: observing a request failed")

    def _observe(self, event: RequestFinished) -> None:
        s = self.settings
        obs = observation_of(event, s.scalar_signals, s.uses_vector, self._project)
        if obs is None:
            return
        key = version_of(event.model, event.adapter)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(
                event.model, DriftMonitor(s, key, self._stored.get(key)))
        was_collecting = watch.monitor.status().phase == "reference"
        before = watch.monitor.status().alarm_at
        status = watch.monitor.observe(obs)
        watch.observed += 1
        self._publish(key, watch)
        completed = was_collecting and watch.monitor.status().phase == "watching"
        if completed:
            self._persist(key, watch.monitor)
        if status is not None and status.alarm and before is None:
            self._alarm(watch.model, status)

    def _publish(self, key: str, watch: _Watch) -> None:
        with self._lock:
            self._snapshots[key] = (watch.model, watch.monitor.status(), watch.observed)

    def _reset(self, model: str) -> list[str]:
        keys = sorted(k for k, w in self._watches.items() if w.model == model or k == model)
        for k in keys:
            self._watches[k].monitor.reset()
            self._stored.pop(k, None)
            self._publish(k, self._watches[k])
        return keys

    def _alarm(self, model: str, status: DriftStatus) -> None:
        event = DriftDetected(
            model=model, version=status.version,
            signals={n: (s.statistic, s.p_value) for n, s in status.signals.items()},
            threshold=status.threshold, window=status.window,
            reference_size=status.reference_size, observed=status.observed)
        log.warning("drift detected on %s: %s", status.version, ", ".join(
            f"{n} p={s.p_value:.2g}" for n, s in status.signals.items()))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.events.publish, event)
        else:
            self.events.publish(event)
        if self.audit is not None:
            detail = asdict(event)
            detail["signals"] = {n: {"statistic": st, "p_value": p}
                                 for n, (st, p) in event.signals.items()}
            try:
                self.audit("drift_detected", detail)
            except Exception:
                log.exception("drift: the alarm could not be audited")

    # -- the store: aggregates only -----------------------------------------
    def _persist(self, key: str, monitor: DriftMonitor) -> None:
        if self.store is None:
            return
        doc = {"version": key, "aggregate": monitor.aggregate().to_json()}
        try:
            self.store.put_bytes(STORE_KIND, object_name(key),
                                 json.dumps(doc, separators=(",", ":")).encode())
        except Exception:
            log.exception("drift: sealing the reference of %s failed", key)

    def _load_aggregates(self) -> dict[str, ReferenceAggregate]:
        if self.store is None:
            return {}
        found: dict[str, ReferenceAggregate] = {}
        try:
            objects = self.store.list(STORE_KIND)
        except Exception:
            log.exception("drift: listing stored references failed")
            return {}
        for name in sorted({o.name for o in objects}):
            try:
                doc = json.loads(self.store.read_bytes(STORE_KIND, name))
                found[str(doc["version"])] = ReferenceAggregate.from_json(doc["aggregate"])
            except (IntegrityError, ValueError, KeyError, TypeError) as exc:
                log.warning("drift: stored reference %s unusable (%s); collecting anew",
                            name, exc)
        return found


def object_name(version: str) -> str:
    """The store name of a version's reference (store names are short and
    plain; the version itself is inside)."""
    return "ref-" + hashlib.sha256(version.encode()).hexdigest()[:24]


def summary(status: DriftStatus, model: str, observed: int) -> dict[str, Any]:
    """What `hearth drift status` prints and Models.Get shows."""
    def num(x: float) -> float | None:
        return None if x != x else x        # NaN (no threshold yet) -> null
    return {
        "model": model, "version": status.version, "phase": status.phase,
        "reference_size": status.reference_size, "window": status.window,
        "observed": observed, "threshold": num(status.threshold), "alarm": status.alarm,
        "signals": {name: {"statistic": s.statistic, "p_value": s.p_value,
                           "kind": BY_NAME[name].kind.value if name in BY_NAME
                           else SignalKind.SCALAR.value}
                    for name, s in status.signals.items()},
    }
