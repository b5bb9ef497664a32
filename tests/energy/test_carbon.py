"""Grid intensity from the operator's table, never from the network."""
from __future__ import annotations

from datetime import datetime

import pytest

from runtime.energy.carbon import GridIntensity
from runtime.errors import ConfigError

TABLE = [{"from": "22:00", "to": "06:00", "g": 150},
         {"from": "06:00", "to": "22:00", "g": 400}]


def test_constant_and_table() -> None:
    assert GridIntensity.parse(300).grams(3.6e6, datetime(2026, 1, 1, 12)) == pytest.approx(300)
    grid = GridIntensity.parse(TABLE)
    assert grid.at(datetime(2026, 1, 1, 23, 30)) == 150      # wraps midnight
    assert grid.at(datetime(2026, 1, 1, 3, 0)) == 150
    assert grid.at(datetime(2026, 1, 1, 6, 0)) == 400
    assert grid.grams(1.8e6, datetime(2026, 1, 1, 12)) == pytest.approx(200)


@pytest.mark.parametrize("bad", [
    -1, True, "300", [], [{"from": "00:00", "to": "12:00", "g": 1}],          # gap
    [{"from": "00:00", "to": "00:00", "g": 1}, {"from": "01:00", "to": "02:00", "g": 2}],
    [{"from": "24:00", "to": "00:00", "g": 1}], [{"from": "00:00", "to": "00:00", "g": -1}],
    [{"from": "00:00\n", "to": "00:00", "g": 1}],
])
def test_bad_tables_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"energy\.grid_g_per_kwh"):
        GridIntensity.parse(bad)
