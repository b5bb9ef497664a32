"""Fakes for the accountant: a clock, engines whose step logs we write, and a
batched engine with a known energy model that drives a fake powercap tree."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from runtime.native import StepRecord
from tests.energy.test_meters import FakePowercap


class Clock:
    def __init__(self, start_s: float = 100.0) -> None:
        self.ns = int(start_s * 1e9)

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


@dataclass
class FakeEngine:
    serial: int
    enabled: int = 0
    records: list[StepRecord] = field(default_factory=list)
    lost: int = 0

    def enable_step_log(self, capacity: int) -> None:
        self.enabled = capacity

    def drain_steps(self) -> tuple[list[StepRecord], int]:
        out, lost = self.records, self.lost
        self.records, self.lost = [], 0
        return out, lost

    def step(self, t0_s: float, t1_s: float, work: dict[int, tuple[int, int]]) -> None:
        for rid, (p, d) in work.items():
            self.records.append(StepRecord(rid, int(t0_s * 1e9), int(t1_s * 1e9), p, d, False))

    def finish(self, rid: int, t_s: float) -> None:
        self.records.append(StepRecord(rid, int(t_s * 1e9), int(t_s * 1e9), 0, 0, True))


class Engines:
    def __init__(self, **engines: FakeEngine) -> None:
        self.engines = engines

    def __call__(self) -> Iterable[tuple[str, FakeEngine]]:
        return list(self.engines.items())


@dataclass
class LoadModel:
    """Energy of a step: joules per prefill and per decode token, plus the
    package's idle power over the step's time."""

    prefill_j: float = 0.02
    decode_j: float = 0.15
    idle_w: float = 0.0

    def step(self, seconds: float, prefill: int, decode: int) -> float:
        return self.idle_w * seconds + self.prefill_j * prefill + self.decode_j * decode


@dataclass
class Job:
    rid: int
    prompt: int
    output: int
    prefilled: int = 0
    generated: int = 0

    @property
    def done(self) -> bool:
        return self.generated >= self.output


class BatchedSim:
    """A batched engine on one fake powercap package: each step decodes one
    token per running request and prefills up to `chunk` prompt tokens,
    advancing the counter by the load model's energy for the step (plus a
    multiplicative noise the caller supplies)."""

    def __init__(self, tree: FakePowercap, clock: Clock, engine: FakeEngine, load: LoadModel,
                 step_s: float = 0.02, chunk: int = 64) -> None:
        self.tree, self.clock, self.engine, self.load = tree, clock, engine, load
        self.step_s, self.chunk = step_s, chunk
        self.carry_uj = 0.0
        self.total_j = 0.0

    def run_step(self, jobs: list[Job], noise: float = 1.0) -> list[Job]:
        """One step over the running jobs; returns those that finished."""
        t0 = self.clock.ns / 1e9
        work: dict[int, tuple[int, int]] = {}
        budget = self.chunk
        for job in jobs:
            if job.prefilled < job.prompt:
                n = min(budget, job.prompt - job.prefilled)
                if n == 0:
                    continue
                budget -= n
                job.prefilled += n
                work[job.rid] = (n, 0)
                if job.prefilled == job.prompt:
                    job.generated += 1           # the prefill's last row samples one
            else:
                work[job.rid] = (0, 1)
                job.generated += 1
        prefill = sum(p for p, _ in work.values())
        decode = sum(d for _, d in work.values())
        joules = self.load.step(self.step_s, prefill, decode) * noise
        self.advance_counter(joules)
        self.clock.advance(self.step_s)
        t1 = self.clock.ns / 1e9
        self.engine.step(t0, t1, work)
        finished = [j for j in jobs if j.done]
        for j in finished:
            self.engine.finish(j.rid, t1)
        return finished

    def idle(self, seconds: float) -> None:
        self.advance_counter(self.load.idle_w * seconds)
        self.clock.advance(seconds)

    def advance_counter(self, joules: float) -> None:
        # Written to the tree on flush(), before a window reads it: sysfs
        # writes are slow on a shared disk, and a reader sees no difference.
        self.total_j += joules
        self.carry_uj += joules * 1e6

    def flush(self) -> None:
        whole = int(self.carry_uj)
        self.carry_uj -= whole
        self.tree.advance([whole])
