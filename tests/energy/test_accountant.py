"""The accountant on a fake powercap tree: exact joules back across wraps,
every window's per-request figures adding up to its total, final figures
handed over once, and the weights calibrated from the windows."""
from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from runtime.config import EnergyConfig
from runtime.energy.accountant import Accountant, RequestEnergy
from runtime.energy.carbon import GridIntensity
from runtime.energy.meters import RaplMeter, Reading
from runtime.energy.service import EnergyService
from runtime.energy.weights import Weights
from tests.energy.fakes import BatchedSim, Clock, Engines, FakeEngine, Job, LoadModel
from tests.energy.test_meters import FakePowercap


def test_exact_joules_and_conservation_over_wrapping_counters(tmp_path: Path) -> None:
    """Two packages whose counters advance at 7 W and 3 W and wrap at 10 J
    (every ~1.4 s and ~3.3 s, so a window sees at most one wrap, as real
    counters that wrap in minutes): every window gets exactly the joules that went in,
    and its per-request figures plus its idle energy add up to it within
    1% (in fact to rounding).  Checked that it can fail: taking a window's
    energy from one package only, or dropping the idle remainder, breaks
    the sums."""
    tree = FakePowercap(tmp_path, packages=2, max_range_uj=9_999_999, start_uj=5_000_000)
    clock, engine = Clock(), FakeEngine(serial=1)
    acc = Accountant(RaplMeter(tmp_path), Engines(m=engine), Weights(2.0, 0.1, 0.5),
                     clock_ns=clock)
    rng = np.random.default_rng(3)
    total_in = 0.0
    attributed = 0.0
    running: dict[int, float] = {}
    next_rid = 1
    for w in range(40):
        # 20 steps of 50 ms per 1 s window, 0..4 requests, some finishing
        for _ in range(20):
            t0 = clock.ns / 1e9
            if len(running) < 4 and rng.random() < 0.2:
                running[next_rid] = t0
                next_rid += 1
            clock.advance(0.05)
            total_in += 0.5                       # 7 W and 3 W over 50 ms
            work = {rid: (int(rng.integers(0, 40)), 1) for rid in running}
            engine.step(t0, clock.ns / 1e9, work)
            for rid in list(running):
                if rng.random() < 0.1:
                    engine.finish(rid, clock.ns / 1e9)
                    del running[rid]
        tree.advance([7_000_000, 3_000_000])      # written once: sysfs is slow here
        report = acc.close_window()
        assert report.joules == pytest.approx(10.0, abs=1e-6)     # 20 × 0.5 J exactly
        assert report.attributed == pytest.approx(report.joules, rel=0.01)
        assert report.attributed == pytest.approx(report.joules, rel=1e-9)
        attributed += report.attributed
        assert w < 2 or report.per_request or not running
    assert attributed == pytest.approx(total_in, rel=1e-9)
    t = acc.totals
    assert sum(t.joules.values()) + t.idle_joules == pytest.approx(total_in, rel=1e-9)


def test_a_request_figure_is_final_once_and_adds_up(tmp_path: Path) -> None:
    """Requests' final figures plus idle energy equal the counter's total;
    each final figure is handed over once.  Checked that it can fail:
    closing the ended requests' figures before the window's shares are
    added (a figure closed before its last window) breaks the sum."""
    tree = FakePowercap(tmp_path, packages=1, max_range_uj=(1 << 40))
    clock, engine = Clock(), FakeEngine(serial=7)
    acc = Accountant(RaplMeter(tmp_path), Engines(gemma=engine), clock_ns=clock)
    sim = BatchedSim(tree, clock, engine, LoadModel(idle_w=5.0))
    jobs = [Job(1, 100, 30), Job(2, 10, 60), Job(3, 300, 5)]
    finals: dict[int, RequestEnergy] = {}
    while jobs:
        for _ in range(10):
            for done in sim.run_step(jobs):
                jobs.remove(done)
        sim.flush()
        acc.close_window()
        for rid in (1, 2, 3):
            got = acc.final(7, rid)
            if got is not None:
                assert rid not in finals
                finals[rid] = got
    sim.idle(2.0)
    sim.flush()
    acc.close_window()
    assert set(finals) == {1, 2, 3}
    assert all(f.source == "rapl" and f.joules > 0 for f in finals.values())
    counted = sum(f.joules for f in finals.values()) + acc.totals.idle_joules
    assert counted == pytest.approx(sim.total_j, rel=1e-6)
    assert sum(f.joules for f in finals.values()) == pytest.approx(acc.totals.joules["gemma"])
    assert acc.totals.idle_joules == pytest.approx(10.0, rel=1e-6)   # the 2 s alone
    assert acc.final(7, 1) is None


def test_weights_are_calibrated_from_the_windows(tmp_path: Path) -> None:
    """Windows of a known load model (idle 3 W, prefill 0.02 J, decode
    0.15 J per token) give those prices back, and the new weights are
    handed to the store callback.  Checked that it can fail: with no refit
    (REFIT_EVERY above the run's windows) the defaults (0 W, 1, 1) stay."""
    tree = FakePowercap(tmp_path, packages=1, max_range_uj=(1 << 32) - 1)
    clock, engine = Clock(), FakeEngine(serial=1)
    saved: list[Weights] = []
    acc = Accountant(RaplMeter(tmp_path), Engines(m=engine), clock_ns=clock,
                     on_weights=saved.append)
    load = LoadModel(prefill_j=0.02, decode_j=0.15, idle_w=3.0)
    sim = BatchedSim(tree, clock, engine, load)
    rng = np.random.default_rng(5)
    rid = 0
    for _ in range(60):
        jobs = []
        for _ in range(int(rng.integers(1, 6))):
            rid += 1
            jobs.append(Job(rid, int(rng.integers(1, 200)), int(rng.integers(1, 30))))
        for _ in range(int(rng.integers(5, 40))):
            for done in sim.run_step(jobs):
                jobs.remove(done)
        sim.idle(float(rng.uniform(0, 0.5)))
        sim.flush()
        acc.close_window()
    assert saved
    got = acc.weights
    assert got.idle_watts == pytest.approx(3.0, rel=0.05)
    assert got.prefill == pytest.approx(0.02, rel=0.05)
    assert got.decode == pytest.approx(0.15, rel=0.05)


def test_carbon_follows_the_grid_table(tmp_path: Path) -> None:
    """The window's wall-clock time picks the band: at 13:00, 400 g/kWh
    (the other band, 100 g, would give a quarter)."""
    from datetime import datetime

    tree = FakePowercap(tmp_path, packages=1, max_range_uj=(1 << 40))
    clock, engine = Clock(), FakeEngine(serial=1)
    grid = GridIntensity.parse([{"from": "00:00", "to": "12:00", "g": 100},
                                {"from": "12:00", "to": "00:00", "g": 400}])
    acc = Accountant(RaplMeter(tmp_path), Engines(m=engine), grid=grid, clock_ns=clock,
                     wall=lambda: datetime(2026, 1, 1, 13, 0))
    engine.step(100.0, 101.0, {1: (10, 0)})
    engine.finish(1, 101.0)
    clock.advance(1.0)
    tree.advance([3_600_000])                  # 3.6 J = 1e-6 kWh
    acc.close_window()
    final = acc.final(1, 1)
    assert final is not None and final.joules == pytest.approx(3.6)
    assert final.co2e_grams == pytest.approx(400 * 1e-6)
    assert acc.totals.co2e_grams["m"] == pytest.approx(400 * 1e-6)


class _Meter:
    def __init__(self) -> None:
        self.joules = 0.0

    def read(self) -> Reading:
        return Reading(self.joules, "estimate", "test")


def test_settle_closes_the_window_at_a_requests_end() -> None:
    """The final chunk's figure: settle() closes the window at once when the
    request's end is in the step log, so it waits for nothing and the
    figure is whole; a second settle of another request of the same window
    needs no new window.  Checked that it can fail: returning so_far()
    without closing the window gives 0 J."""
    engine = FakeEngine(serial=3)
    handle = SimpleNamespace(name="m", engine=engine, state=__import__(
        "runtime.models.manager", fromlist=["ModelState"]).ModelState.READY)
    models = SimpleNamespace(handles=lambda: [handle])
    meter = _Meter()
    service = EnergyService(EnergyConfig(), models, meter=meter)  # type: ignore[arg-type]
    import time
    now = time.monotonic()
    engine.step(now - 0.2, now - 0.1, {1: (5, 0), 2: (5, 0)})
    engine.finish(1, now - 0.1)
    engine.finish(2, now - 0.1)
    meter.joules = 4.0

    async def go() -> tuple[RequestEnergy, RequestEnergy, int]:
        a = await service.settle(3, 1)
        windows = service.accountant.totals.windows
        b = await service.settle(3, 2)
        return a, b, service.accountant.totals.windows - windows

    a, b, extra = asyncio.run(go())
    assert a.source == "estimate" and b.source == "estimate"
    assert a.joules + b.joules == pytest.approx(4.0)
    assert a.joules == pytest.approx(b.joules)
    assert extra == 0
