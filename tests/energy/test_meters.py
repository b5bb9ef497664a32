"""Meters on a fake powercap tree whose counters advance at known rates and wrap."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.energy.meters import (
    CpuShare,
    EstimateMeter,
    MeterUnavailable,
    RaplMeter,
    ScaledRapl,
    Source,
    open_cpu_meter,
    rapl_package_zones,
)


class FakePowercap:
    """intel-rapl:N package zones (with a sub-zone that must not count twice)."""

    def __init__(self, root: Path, packages: int = 2, max_range_uj: int = 1_000_000,
                 start_uj: int = 0) -> None:
        self.root = root
        self.max_range = max_range_uj
        self.values = [start_uj] * packages
        for i in range(packages):
            zone = root / f"intel-rapl:{i}"
            (zone / f"intel-rapl:{i}:0").mkdir(parents=True)
            (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
            (zone / f"intel-rapl:{i}:0" / "energy_uj").write_text("123\n")
            (zone / f"intel-rapl:{i}:0" / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        self._write()

    def _write(self) -> None:
        for i, v in enumerate(self.values):
            (self.root / f"intel-rapl:{i}" / "energy_uj").write_text(f"{v}\n")

    def advance(self, uj_per_package: list[int]) -> None:
        """Counters move on and wrap past max_energy_range_uj back to 0."""
        self.values = [(v + d) % (self.max_range + 1)
                       for v, d in zip(self.values, uj_per_package, strict=True)]
        self._write()


def test_only_package_zones_count(tmp_path: Path) -> None:
    FakePowercap(tmp_path, packages=2)
    assert [z.name for z in rapl_package_zones(tmp_path)] == ["intel-rapl:0", "intel-rapl:1"]


def test_exact_joules_across_wraparound(tmp_path: Path) -> None:
    """Two packages at 0.6 J and 0.9 J per read, counters wrapping at 1 J
    (plus one uJ): the meter returns exactly the sum.  Checked that it can
    fail: without the wrap correction the total goes negative."""
    fake = FakePowercap(tmp_path, packages=2, max_range_uj=999_999, start_uj=900_000)
    meter = RaplMeter(tmp_path)
    for n in range(1, 8):
        fake.advance([600_000, 900_000])
        reading = meter.read()
        assert reading.source is Source.RAPL
        assert reading.joules == pytest.approx(n * 1.5, abs=1e-9)


def test_unreadable_or_missing_counters_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL"):
        RaplMeter(tmp_path / "nothing")


def test_package_energy_is_scaled_by_the_process_share(tmp_path: Path) -> None:
    """Kepler's rule: the daemon's part of the socket's energy is its share of
    busy CPU time over the same window."""
    fake = FakePowercap(tmp_path, packages=1)
    own, total = [0.0], [0.0]
    share = CpuShare(own=lambda: own[0], total=lambda: total[0])
    meter = ScaledRapl(RaplMeter(tmp_path), share)
    fake.advance([400_000])                # 0.4 J while we used 1 of 4 busy CPU-seconds
    own[0], total[0] = 1.0, 4.0
    assert meter.read().joules == pytest.approx(0.1)
    fake.advance([200_000])                # 0.2 J while we used all of it
    own[0], total[0] = 3.0, 6.0
    assert meter.read().joules == pytest.approx(0.3)


def test_without_counters_the_meter_is_an_estimate_and_says_so(tmp_path: Path) -> None:
    seconds = [10.0]
    meter = EstimateMeter(cpu_watts=40.0, cores=4, cpu_seconds=lambda: seconds[0])
    seconds[0] = 12.0
    reading = meter.read()
    assert reading.source is Source.ESTIMATE and "estimated" in reading.note
    assert reading.joules == pytest.approx(2.0 * 40.0 / 4)
    assert isinstance(open_cpu_meter(tmp_path / "none", 35.0), EstimateMeter)
    FakePowercap(tmp_path / "pc", packages=1)
    assert open_cpu_meter(tmp_path / "pc", 35.0).source is Source.RAPL
