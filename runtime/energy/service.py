"""The daemon's energy accounting: the meter, the window loop, the weights
in the sealed store, and the figure each request's final chunk carries.

Windows close every `[energy] window_s` (1 s), and also when a request ends:
its final chunk asks `settle()`, which closes the window at once, so the
figure it carries is the request's whole energy, final, with no wait for
the window's end (a meter whose counter moves in coarse steps, NVML, first
lets the window reach MIN_WINDOW_S).  Every figure a response carries is
the same one Prometheus and the audit log count, so the two add up.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from runtime.config import EnergyConfig
from runtime.energy.accountant import Accountant, Meter, RequestEnergy, StepSource, WindowReport
from runtime.energy.carbon import GridIntensity
from runtime.energy.meters import NvmlMeter, SumMeter, open_cpu_meter
from runtime.energy.weights import Weights
from runtime.errors import IntegrityError
from runtime.events import EventBus, ModelStateChanged
from runtime.models.manager import ModelManager, ModelState
from runtime.native import list_devices
from runtime.storage.store import Kind, SealedStore

log = logging.getLogger("hearth.energy")

# The shortest window a meter's counter can resolve: RAPL updates about
# every millisecond, NVML's energy counter every few tens of milliseconds;
# the estimate reads the process's CPU clock (exact).
MIN_WINDOW_S = {"estimate": 0.0, "rapl": 0.005, "nvml": 0.1}
# The weights are sealed at most this often, and only when they moved.
SAVE_EVERY_S = 3600.0
SAVE_CHANGE = 0.05


def open_meter(cfg: EnergyConfig) -> Meter:
    """The CPU's meter (RAPL scaled to this process, else the estimate),
    plus NVML's counters when a GPU is present and `gpu` is on."""
    cpu = open_cpu_meter(Path(cfg.powercap_root), cfg.cpu_watts)
    if not cfg.gpu or not any(d.type == "gpu" for d in list_devices()):
        return cpu
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        gpu = NvmlMeter(list(range(count)))
    except Exception as exc:     # ImportError, MeterUnavailable, NVMLError
        log.warning("energy: a GPU is present but NVML cannot be read (%s): GPU energy is "
                    "not counted", exc)
        return cpu
    if gpu.note:
        log.warning("energy: %s", gpu.note)
    return SumMeter([gpu, cpu])


def _min_window(source: str) -> float:
    return max(MIN_WINDOW_S.get(part, 0.1) for part in source.split("+"))


def _store_name(source: str) -> str:
    return "weights-" + source.replace("+", "-")


class EnergyService:
    def __init__(self, cfg: EnergyConfig, models: ModelManager,
                 store: SealedStore | None = None, meter: Meter | None = None,
                 events: EventBus | None = None) -> None:
        self.cfg, self.models, self.store = cfg, models, store
        grid = GridIntensity.parse(list(cfg.grid_g_per_kwh)
                                   if isinstance(cfg.grid_g_per_kwh, tuple)
                                   else cfg.grid_g_per_kwh)
        self.meter = meter or open_meter(cfg)
        source = str(self.meter.read().source)
        self._saved = self._load_weights(source)
        self.accountant = Accountant(self.meter, self._engines, self._saved or Weights(), grid,
                                     on_weights=self._weights_changed)
        self.min_window_s = _min_window(source)
        self._saved_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last: WindowReport | None = None
        if events is not None:
            events.subscribe(self._on_model, ModelStateChanged)
        log.info("energy: %s meter%s", source,
                 " (an estimate from CPU time, not a measurement)" if "estimate" in source
                 else "")

    @property
    def source(self) -> str:
        return self.accountant.source

    def _engines(self) -> Iterator[tuple[str, StepSource]]:
        for handle in self.models.handles():
            if handle.engine is not None and handle.state in (ModelState.READY,
                                                               ModelState.DRAINING):
                yield handle.name, handle.engine

    def _on_model(self, event: ModelStateChanged) -> None:
        # A model just became ready: a window now turns its step log on
        # before its first request can run unlogged.
        if event.state == ModelState.READY.value:
            self.close_window()

    # -- windows --------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            due = self.accountant.window_start + self.cfg.window_s
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue        # a request's end may have cut the window meanwhile
            try:
                self.close_window()
            except Exception:
                log.exception("energy: a window could not be accounted")
                await asyncio.sleep(self.cfg.window_s)

    def close_window(self) -> WindowReport:
        self.last = self.accountant.close_window()
        return self.last

    async def settle(self, serial: int, request_id: int) -> RequestEnergy:
        """The request's whole energy, once its engine has finished it (its
        end record is in the step log): closes the window now."""
        got = self.accountant.final(serial, request_id)
        if got is not None:
            return got
        wait = self.accountant.window_start + self.min_window_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
            got = self.accountant.final(serial, request_id)
            if got is not None:
                return got
        self.close_window()
        got = self.accountant.final(serial, request_id)
        return got if got is not None else self.accountant.so_far(serial, request_id)

    def so_far(self, serial: int, request_id: int) -> RequestEnergy:
        return self.accountant.so_far(serial, request_id)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- weights in the sealed store --------------------------------------------
    def _load_weights(self, source: str) -> Weights | None:
        if self.store is None:
            return None
        name = _store_name(source)
        if not any(o.name == name for o in self.store.list(Kind.ENERGY)):
            return None
        try:
            doc = json.loads(self.store.read_bytes(Kind.ENERGY, name))
            w = Weights(**{k: float(doc["weights"][k]) for k in ("idle_watts", "prefill",
                                                                  "decode")})
        except (IntegrityError, ValueError, KeyError, TypeError) as exc:
            log.warning("energy: stored weights %s unusable (%s); calibrating anew", name, exc)
            return None
        log.info("energy: attribution weights from the store: %s", w.to_json())
        return w

    def _weights_changed(self, w: Weights) -> None:
        old = self._saved
        moved = old is None or any(
            abs(a - b) > SAVE_CHANGE * max(abs(b), 1e-12)
            for a, b in zip(w.to_json().values(), old.to_json().values(), strict=True))
        if self.store is None or not moved or (
                old is not None and time.monotonic() - self._saved_at < SAVE_EVERY_S):
            return
        self._saved, self._saved_at = w, time.monotonic()
        doc = {"source": self.source, "weights": w.to_json()}
        data = json.dumps(doc, separators=(",", ":")).encode()
        store, name = self.store, _store_name(self.source)

        def put() -> None:
            try:
                store.put_bytes(Kind.ENERGY, name, data)
            except Exception:
                log.exception("energy: sealing the attribution weights failed")

        if self._loop is not None:
            self._loop.run_in_executor(None, put)
        else:
            put()
