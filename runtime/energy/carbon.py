"""Emissions in the SCI form: gCO2e = energy (kWh) × grid intensity (g/kWh).

Air-gapped sites cannot look intensity up, so the operator gives it: one
number, or a time-of-day table such as

    grid_g_per_kwh = [{from = "00:00", to = "07:00", g = 180},
                      {from = "07:00", to = "00:00", g = 420}]

(ranges may wrap midnight; local time of the appliance).  Nothing here ever
touches the network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runtime.errors import ConfigError

JOULES_PER_KWH = 3.6e6
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)\Z")


def minutes_of_day(text: Any, where: str) -> int:
    m = _HHMM.match(text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(f"{where}: expected HH:MM, got {text!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


@dataclass(frozen=True)
class TimeRange:
    start: int          # minutes after midnight, inclusive
    end: int            # exclusive; end <= start wraps midnight (equal: the whole day)

    def covers(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True)
class Band(TimeRange):
    g_per_kwh: float


@dataclass(frozen=True)
class GridIntensity:
    bands: tuple[Band, ...]

    @classmethod
    def parse(cls, value: Any, where: str = "energy.grid_g_per_kwh") -> GridIntensity:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value < 0:
                raise ConfigError(f"{where}: must be >= 0, got {value}")
            return cls((Band(0, 0, float(value)),))
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: a number or a list of {{from, to, g}} tables")
        bands = []
        for i, row in enumerate(value):
            here = f"{where}[{i}]"
            if not isinstance(row, dict) or set(row) != {"from", "to", "g"}:
                raise ConfigError(f"{here}: needs exactly the keys from, to, g")
            g = row["g"]
            if not isinstance(g, int | float) or isinstance(g, bool) or g < 0:
                raise ConfigError(f"{here}.g: must be a number >= 0")
            bands.append(Band(minutes_of_day(row["from"], f"{here}.from"),
                              minutes_of_day(row["to"], f"{here}.to"), float(g)))
        grid = cls(tuple(bands))
        for minute in range(0, 24 * 60):
            if sum(b.covers(minute) for b in bands) != 1:
                hh, mm = divmod(minute, 60)
                raise ConfigError(f"{where}: {hh:02d}:{mm:02d} is covered "
                                  f"{sum(b.covers(minute) for b in bands)} times, not once")
        return grid

    def at(self, when: datetime) -> float:
        minute = when.hour * 60 + when.minute
        return next(b.g_per_kwh for b in self.bands if b.covers(minute))

    def grams(self, joules: float, when: datetime) -> float:
        return joules / JOULES_PER_KWH * self.at(when)
