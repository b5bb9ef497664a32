"""Carbon-aware training windows: when a federation site may train
(`[federation] training_windows`, docs/energy.md).  No I/O, and no clock:
every question takes "now" (Unix seconds) and the time zone of the
appliance (None: its local time, as the grid table uses).

    training_windows = ["22:00-06:00", "below 200 g/kWh"]

* "HH:MM-HH:MM" is a time-of-day range, local time, end exclusive; it may
  wrap past midnight, and "00:00-00:00" is the whole day;
* "below N g/kWh" holds while the grid intensity (`[energy]
  grid_g_per_kwh`, carbon.GridIntensity: a constant or a time-of-day
  table) is below N.

A site is *inside* when the time is in any of its ranges (no range: any
time) and, if a carbon bound is given, the grid is below it.  No entries:
always inside.  Both change only at whole minutes, so "when does it open
next" steps minute by minute over at most 25 hours (a day, and a daylight
saving shift).  The entries' grammar is config_values.TIME_RANGE
and config_values.BELOW_G_PER_KWH, so the config check and this module agree.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from runtime.config_values import BELOW_G_PER_KWH, TIME_RANGE
from runtime.energy.carbon import GridIntensity, TimeRange, minutes_of_day
from runtime.errors import ConfigError

MINUTE_S = 60.0
SEARCH_MINUTES = 25 * 60            # a day, plus a daylight-saving hour
WHERE = "federation.training_windows"


@dataclass(frozen=True)
class TrainingWindows:
    ranges: tuple[TimeRange, ...] = ()
    below_g_per_kwh: float | None = None
    grid: GridIntensity | None = None        # needed with below_g_per_kwh

    @classmethod
    def parse(cls, entries: Sequence[str], grid: GridIntensity | None,
              where: str = WHERE) -> TrainingWindows:
        """`grid`: the parsed `[energy] grid_g_per_kwh` (needed only with a
        carbon bound).  A set of windows that never opens is refused: a
        site under it would defer every round for ever."""
        ranges: list[TimeRange] = []
        below: float | None = None
        for i, entry in enumerate(entries):
            here = f"{where}[{i}]"
            rng = TIME_RANGE.fullmatch(entry) if isinstance(entry, str) else None
            bound = BELOW_G_PER_KWH.fullmatch(entry) if isinstance(entry, str) else None
            if rng:
                ranges.append(TimeRange(minutes_of_day(rng.group(1), here),
                                        minutes_of_day(rng.group(2), here)))
            elif bound and below is None:
                below = float(bound.group(1))
            else:
                raise ConfigError(f"{here}: expected \"HH:MM-HH:MM\" or one \"below N g/kWh\","
                                  f" got {entry!r}")
        if below is not None and grid is None:
            raise ConfigError(f"{where}: \"below {below:g} g/kWh\" needs [energy] "
                              "grid_g_per_kwh")
        windows = cls(tuple(ranges), below, grid)
        day = datetime(2000, 1, 1)
        if not any(windows._inside_minute(day.replace(hour=m // 60, minute=m % 60))
                   for m in range(24 * 60)):
            raise ConfigError(f"{where}: never open (no minute of the day is in a range with "
                              "the grid below the bound); every round would be deferred")
        return windows

    @property
    def unlimited(self) -> bool:
        return not self.ranges and self.below_g_per_kwh is None

    def _inside_minute(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        if self.ranges and not any(r.covers(minute) for r in self.ranges):
            return False
        if self.below_g_per_kwh is not None:
            assert self.grid is not None
            return self.grid.at(local) < self.below_g_per_kwh
        return True

    def inside(self, now: float, tz: tzinfo | None = None) -> bool:
        return self.unlimited or self._inside_minute(datetime.fromtimestamp(now, tz))

    def _next_change(self, now: float, inside: bool, tz: tzinfo | None) -> float:
        """The first whole minute after `now` whose state is `inside` (inf:
        none within SEARCH_MINUTES)."""
        t = math.floor(now / MINUTE_S) * MINUTE_S
        for _ in range(SEARCH_MINUTES):
            t += MINUTE_S
            if self._inside_minute(datetime.fromtimestamp(t, tz)) == inside:
                return t
        return math.inf

    def next_open(self, now: float, tz: tzinfo | None = None) -> float:
        """`now` when inside, else when the window opens next (Unix
        seconds; parse made sure it does)."""
        if self.inside(now, tz):
            return now
        return self._next_change(now, True, tz)

    def closes_at(self, now: float, tz: tzinfo | None = None) -> float:
        """When the window open at `now` closes (inf: it never does)."""
        if self.unlimited:
            return math.inf
        return self._next_change(now, False, tz)

    def open_intervals(self, now: float, horizon_s: float, tz: tzinfo | None = None
                       ) -> list[tuple[float, float]]:
        """The [opens, closes) intervals that overlap [now, now + horizon_s],
        clipped to it: what a deferring site tells its coordinator."""
        end = now + horizon_s
        if self.unlimited:
            return [(now, end)]
        out: list[tuple[float, float]] = []
        t = now
        while t < end:
            opens = self.next_open(t, tz)
            if opens >= end:
                break
            closes = min(self.closes_at(opens, tz), end)
            out.append((opens, closes))
            t = closes
        return out


NO_WINDOWS = TrainingWindows()


def site_windows(entries: Sequence[str], grid_g_per_kwh: float | Sequence[object]
                 ) -> TrainingWindows:
    """The windows of a hearth.toml: `[federation] training_windows` against
    `[energy] grid_g_per_kwh` (parsed by carbon.GridIntensity, the one
    parser of that table)."""
    if not entries:
        return NO_WINDOWS
    grid_value = list(grid_g_per_kwh) if isinstance(grid_g_per_kwh, tuple | list) \
        else grid_g_per_kwh
    return TrainingWindows.parse(entries, GridIntensity.parse(grid_value))
