"""The [energy] table: defaults on, every key checked and named."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from runtime.config import EnergyConfig, parse_config
from runtime.energy.meters import Reading
from runtime.energy.service import EnergyService
from runtime.errors import ConfigError


def test_on_by_default_and_keys_parse() -> None:
    """Fails when [energy] is missing from the config's sections (unknown table)."""
    assert parse_config({}).energy == EnergyConfig(enabled=True)
    got = parse_config({"energy": {"cpu_watts": 35, "window_s": 2, "gpu": False,
                                   "powercap_root": "/tmp/pc", "grid_g_per_kwh": 250}}).energy
    assert (got.cpu_watts, got.window_s, got.gpu, got.powercap_root, got.grid_g_per_kwh) == \
        (35.0, 2.0, False, "/tmp/pc", 250.0)


@pytest.mark.parametrize(("table", "key"), [
    ({"cpu_watts": 0}, "energy.cpu_watts"), ({"window_s": 0.01}, "energy.window_s"),
    ({"grid_g_per_kwh": -3}, "energy.grid_g_per_kwh"), ({"gpu": "yes"}, "energy.gpu"),
    ({"grid_g_per_kwh": "300"}, "energy.grid_g_per_kwh"), ({"watts": 3}, "energy.watts"),
])
def test_bad_values_name_the_key(table: dict, key: str) -> None:
    """Fails without the range checks in config_values.check_value (0 W, a 10 ms window pass)."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"energy": table})


def test_a_bad_grid_table_stops_the_daemon_naming_the_key() -> None:
    """The table's shape passes config (energy sits above it); its meaning is
    checked by carbon.py when the daemon builds the accountant."""
    cfg = parse_config({"energy": {"grid_g_per_kwh": [{"from": "00:00", "to": "12:00",
                                                        "g": 1}]}}).energy

    class Meter:
        def read(self) -> Reading:
            return Reading(0.0, "estimate")

    with pytest.raises(ConfigError, match=r"energy\.grid_g_per_kwh"):
        EnergyService(cfg, SimpleNamespace(handles=list), meter=Meter())  # type: ignore[arg-type]
