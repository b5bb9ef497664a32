"""Cumulative energy meters.

A meter's `read()` returns joules since the meter was created, as a float
that only grows, plus its source.  Counters that wrap (RAPL's `energy_uj`
wraps at `max_energy_range_uj`) are unwrapped by comparing each reading with
the last: read more often than the wrap period (minutes at full load).

RAPL's package counter covers the whole socket, so the daemon's part is the
counter's delta scaled by the daemon's share of all CPU time over the same
window (as Kepler does); `CpuShare` measures that share from /proc.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")


class Source(StrEnum):
    NVML = "nvml"
    RAPL = "rapl"
    ESTIMATE = "estimate"


@dataclass(frozen=True)
class Reading:
    joules: float
    source: str               # a Source, or several joined by "+" (SumMeter)
    note: str = ""


class MeterUnavailable(RuntimeError):
    """The counter is missing or unreadable (the caller falls back, and says so)."""


# -- RAPL ---------------------------------------------------------------------

@dataclass
class _Counter:
    path: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0

    def advance(self) -> None:
        now = int(self.path.read_text())
        delta = now - self.last_uj
        if delta < 0:                       # wrapped (at most once since the last read)
            delta += self.max_range_uj + 1
        self.total_uj += delta
        self.last_uj = now


def rapl_package_zones(root: Path) -> list[Path]:
    """Top-level package zones (`intel-rapl:N`, and `amd-rapl:N` where a
    kernel names them so); sub-zones such as `intel-rapl:0:0` are parts of a
    package and would count twice."""
    zones = []
    for zone in sorted(root.glob("*-rapl:*")):
        if zone.name.count(":") == 1 and (zone / "energy_uj").exists():
            zones.append(zone)
    return zones


class RaplMeter:
    source = Source.RAPL

    def __init__(self, root: Path = DEFAULT_POWERCAP_ROOT) -> None:
        zones = rapl_package_zones(root)
        if not zones:
            raise MeterUnavailable(f"no RAPL package zones under {root}")
        self._counters = []
        for zone in zones:
            try:
                self._counters.append(_Counter(
                    zone / "energy_uj", int((zone / "max_energy_range_uj").read_text()),
                    int((zone / "energy_uj").read_text())))
            except PermissionError as exc:
                raise MeterUnavailable(
                    f"{zone / 'energy_uj'} is not readable (root-only on current kernels; "
                    "see docs/energy.md for the udev rule)") from exc
            except (OSError, ValueError) as exc:
                raise MeterUnavailable(f"{zone}: {exc}") from exc
        self.zones = [c.path.parent.name for c in self._counters]

    def read(self) -> Reading:
        for c in self._counters:
            c.advance()
        return Reading(sum(c.total_uj for c in self._counters) / 1e6, self.source)


# -- CPU share ------------------------------------------------------------------

def _proc_cpu_seconds(pid: int | str = "self", proc: Path = Path("/proc")) -> float:
    fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks       # utime + stime


def _total_cpu_seconds(proc: Path = Path("/proc")) -> float:
    first = (proc / "stat").read_text().splitlines()[0].split()
    busy = sum(int(x) for i, x in enumerate(first[1:], 1) if i not in (4, 5))  # not idle/iowait
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuShare:
    """The daemon's share of all busy CPU time between two calls of `take`."""

    own: Callable[[], float] = _proc_cpu_seconds
    total: Callable[[], float] = _total_cpu_seconds
    _last: tuple[float, float] = field(default=(0.0, 0.0), init=False)

    def __post_init__(self) -> None:
        self._last = (self.own(), self.total())

    def take(self) -> float:
        own, total = self.own(), self.total()
        d_own, d_total = own - self._last[0], total - self._last[1]
        self._last = (own, total)
        if d_total <= 0:
            return 0.0
        return min(1.0, max(0.0, d_own / d_total))


class ScaledRapl:
    """RAPL scaled to this process: each read's delta times the CPU share."""

    source = Source.RAPL

    def __init__(self, meter: RaplMeter, share: CpuShare) -> None:
        self.meter, self.share = meter, share
        self._last = meter.read().joules
        self._total = 0.0

    def read(self) -> Reading:
        now = self.meter.read().joules
        self._total += (now - self._last) * self.share.take()
        self._last = now
        return Reading(self._total, self.source, "package energy × this process's CPU share")


# -- NVML -----------------------------------------------------------------------

class NvmlMeter:
    """GPU energy from NVML (`nvidia-ml-py`): the cumulative counter in mJ
    (Volta and newer), else instantaneous power integrated between reads."""

    source = Source.NVML

    def __init__(self, device_indices: list[int], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise MeterUnavailable("nvidia-ml-py is not installed") from exc
        try:
            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in device_indices]
        except pynvml.NVMLError as exc:
            raise MeterUnavailable(f"NVML: {exc}") from exc
        self._nvml, self._clock = pynvml, clock
        self._counter = True
        self.note = ""
        try:
            self._start = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
        except pynvml.NVMLError:
            self._counter = False
            self.note = "no energy counter on this GPU: power integrated between reads"
            self._integrated, self._last_t = 0.0, clock()

    def read(self) -> Reading:
        nv = self._nvml
        if self._counter:
            mj = sum(nv.nvmlDeviceGetTotalEnergyConsumption(h) - s
                     for h, s in zip(self._handles, self._start, strict=True))
            return Reading(mj / 1e3, self.source)
        now = self._clock()
        watts = sum(nv.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1e3
        self._integrated += watts * (now - self._last_t)
        self._last_t = now
        return Reading(self._integrated, self.source, self.note)


# -- estimate -------------------------------------------------------------------

class EstimateMeter:
    """No counter: CPU seconds × `cpu_watts` / cores (the package's power at
    full load, spread over its cores).  Always labelled an estimate."""

    source = Source.ESTIMATE

    def __init__(self, cpu_watts: float, cores: int | None = None,
                 cpu_seconds: Callable[[], float] = _proc_cpu_seconds) -> None:
        if cpu_watts <= 0:
            raise ValueError("energy.cpu_watts must be > 0")
        self.cpu_watts = cpu_watts
        self.cores = cores or os.cpu_count() or 1
        self._cpu_seconds = cpu_seconds
        self._start = cpu_seconds()

    def read(self) -> Reading:
        used = self._cpu_seconds() - self._start
        return Reading(used * self.cpu_watts / self.cores, self.source,
                       f"estimated from CPU time at {self.cpu_watts:g} W per package")


def open_cpu_meter(powercap_root: Path, cpu_watts: float) -> RaplMeter | ScaledRapl | EstimateMeter:
    """RAPL scaled to this process where readable, else the estimate (from
    the process's CPU clock, exact to the nanosecond: energy windows may be
    short, and /proc's ticks are 10 ms)."""
    try:
        return ScaledRapl(RaplMeter(powercap_root), CpuShare())
    except MeterUnavailable:
        return EstimateMeter(cpu_watts, cpu_seconds=time.process_time)


class SumMeter:
    """Several meters read as one (the GPUs' NVML counters plus the CPU's):
    the source names every part, so a sum with an estimate in it never
    reads as a pure measurement."""

    def __init__(self, meters: list[RaplMeter | ScaledRapl | EstimateMeter | NvmlMeter]) -> None:
        self.meters = meters
        self.source = "+".join(str(m.source) for m in meters)

    def read(self) -> Reading:
        readings = [m.read() for m in self.meters]
        return Reading(sum(r.joules for r in readings), self.source,
                       "; ".join(r.note for r in readings if r.note))
