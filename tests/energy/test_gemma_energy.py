"""Energy per request on the real daemon serving Gemma 3 270M: 8
concurrent streams (generate and chat), each final chunk carrying its
energy; on a machine without counters every figure is an estimate, and the
figures add up to what Prometheus counted."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.client import AsyncHearthClient
from tests.integration.conftest import start_daemon

pytestmark = pytest.mark.gemma


def energy_total(addr: str) -> float:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text)
               if f.name == "hearth_energy_joules" for s in f.samples
               if s.name == "hearth_energy_joules_total")


def test_eight_streams_report_estimates_that_add_up(gemma_model: Path, tmp_path: Path) -> None:
    """Checked that it can fail: with the final chunk carrying only the
    windows closed before the request ended (so_far instead of settle in
    core/inference.py), the responses' sum falls short of the Prometheus
    delta by the last windows' shares (on the tiny model: 0 J against
    2.9 J).  The scrape waits past a window so that Prometheus has every
    window of these requests closed."""
    config = tmp_path / "hearth.toml"
    # No powercap tree and no GPU counters: the estimate, whatever this machine has.
    config.write_text(f'[energy]\npowercap_root = "{tmp_path / "no-powercap"}"\n'
                      'gpu = false\ncpu_watts = 35.0\ngrid_g_per_kwh = 300\n')
    d = start_daemon(["--config", str(config), "--model", f"gemma={gemma_model}",
                      "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                      "--chat-template", "gemma", "--parallel", "8", "--ctx", "4096",
                      "--threads", "2"], tmp_path)
    try:
        addr = json.loads(next(tmp_path.glob("ready-*.json")).read_text())["metrics"]
        before = energy_total(addr)

        async def run() -> list:
            async with AsyncHearthClient(d.tcp) as c:
                async def chat(i: int) -> object:
                    last = None
                    async for chunk in c.chat([("user", f"Name a colour, number {i}.")],
                                              max_tokens=32, temperature=0.0, ignore_eos=True):
                        last = chunk
                    return last

                gens = [c.complete(f"Write about the sea, part {i}:", max_tokens=32,
                                   temperature=0.0, ignore_eos=True) for i in range(4)]
                done = await asyncio.gather(*gens, *[chat(i) for i in range(4)])
            return [x[2] if isinstance(x, tuple) else x for x in done]

        finals = asyncio.run(run())
        time.sleep(1.5)         # past [energy] window_s: every window is closed
        after = energy_total(addr)
    finally:
        assert d.stop() == 0, d.log()
    assert len(finals) == 8
    assert all(f.usage.energy_source == "estimate" for f in finals)
    assert all(f.usage.energy_joules > 0 for f in finals)
    per_request = sum(f.usage.energy_joules for f in finals)
    assert per_request == pytest.approx(after - before, rel=0.02)
