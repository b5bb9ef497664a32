"""Carbon-aware training windows (runtime/energy/windows.py): inside or
not, and when the window opens next, with "now" and the time zone passed
in, so nothing waits for real time.

Checked by edits, run and reverted: with `TimeRange.covers` not wrapping
(only `start <= minute < end`) the midnight tests fail; with the carbon
bound ignored in `_inside_minute` the grid tests fail; without the
"never open" check the refusal test fails.
"""
from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from runtime.config import parse_config
from runtime.energy.carbon import GridIntensity
from runtime.energy.windows import NO_WINDOWS, TrainingWindows, site_windows
from runtime.errors import ConfigError

GRID = [{"from": "22:00", "to": "06:00", "g": 150},
        {"from": "06:00", "to": "17:00", "g": 250},
        {"from": "17:00", "to": "22:00", "g": 450}]


def at(hour: int, minute: int = 0, day: int = 2) -> float:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC).timestamp()


def windows(*entries: str, grid: object = 0) -> TrainingWindows:
    return TrainingWindows.parse(entries, GridIntensity.parse(grid))


def test_a_range_across_midnight() -> None:
    w = windows("22:00-06:00")
    assert w.inside(at(23, 30), UTC) and w.inside(at(0, 0), UTC) and w.inside(at(5, 59), UTC)
    assert not w.inside(at(6, 0), UTC) and not w.inside(at(12), UTC)
    assert w.next_open(at(12), UTC) == at(22)
    assert w.next_open(at(23), UTC) == at(23)                  # inside: now
    assert w.closes_at(at(23), UTC) == at(6, 0, day=3)
    assert w.next_open(at(21, 59) + 30, UTC) == at(22)         # from mid-minute


def test_below_a_carbon_bound_against_the_grid_table() -> None:
    w = windows("below 200 g/kWh", grid=GRID)
    assert w.inside(at(23), UTC) and not w.inside(at(12), UTC)
    assert w.next_open(at(7), UTC) == at(22)
    assert windows("below 300 g/kWh", grid=GRID).open_intervals(at(0), 86400, UTC) == [
        (at(0), at(17)), (at(22), at(0, day=3))]


def test_ranges_and_a_bound_must_both_hold() -> None:
    w = windows("12:00-14:00", "23:00-01:00", "below 200 g/kWh", grid=GRID)
    assert not w.inside(at(13), UTC)           # in a range, grid at 250
    assert w.inside(at(23, 30), UTC)
    assert w.next_open(at(13), UTC) == at(23)
    assert w.open_intervals(at(20), 86400, UTC) == [(at(23), at(1, day=3))]


def test_no_entries_and_a_constant_grid() -> None:
    assert NO_WINDOWS.inside(at(12), UTC) and NO_WINDOWS.closes_at(at(12), UTC) == math.inf
    assert NO_WINDOWS.open_intervals(at(0), 3600, UTC) == [(at(0), at(1))]
    assert site_windows((), 300.0) is NO_WINDOWS
    assert site_windows(("below 400 g/kWh",), 300.0).inside(at(12), UTC)
    assert windows("00:00-00:00").inside(at(3), UTC)          # the whole day


def test_windows_that_never_open_are_refused() -> None:
    with pytest.raises(ConfigError, match="never open"):
        windows("below 100 g/kWh", grid=GRID)
    with pytest.raises(ConfigError, match="never open"):
        windows("07:00-12:00", "below 200 g/kWh", grid=GRID)


@pytest.mark.parametrize("bad", [["22:00"], ["25:00-06:00"], ["22:00-06:00 "],
                                 ["below 200"], ["below -5 g/kWh"], "22:00-06:00",
                                 ["below 1 g/kWh", "below 2 g/kWh"], [22]])
def test_the_config_names_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"federation\.training_windows"):
        parse_config({"federation": {"training_windows": bad}})


def test_the_config_keeps_the_entries_for_the_windows() -> None:
    cfg = parse_config({"federation": {"training_windows": ["22:00-06:00", "below 200 g/kWh"]},
                        "energy": {"grid_g_per_kwh": GRID}})
    assert cfg.federation.training_windows == ("22:00-06:00", "below 200 g/kWh")
    w = site_windows(cfg.federation.training_windows, cfg.energy.grid_g_per_kwh)
    assert w.inside(at(23), UTC) and not w.inside(at(12), UTC)
