"""The engine's step log: per step, which requests took part and how many
prefill and decode tokens each contributed (energy accounting drains it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime import errors
from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling
from tests.native.helpers import collect

GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> NativeEngine:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=2048, n_parallel=4,
                                  n_threads=1, n_threads_batch=1, max_queue=8,
                                  prefill_chunk=16))
    yield e
    e.close()


def test_records_count_every_token_once_and_mark_the_end(engine: NativeEngine) -> None:
    """Three concurrent requests: each one's prefill records add up to its
    prompt, its decode records to its generated tokens (the first token comes
    from the prefill step), and one FINISHED record follows its last step.
    Checked that it can fail: committing the step's records after its
    finishes (at the end of publish_step) fails this, the ring test and the
    score test (the end record is no longer last)."""
    engine.enable_step_log(4096)
    prompts = [list(range(3, 3 + n)) for n in (5, 40, 23)]
    reqs = [engine.submit(RequestParams(prompt=p, max_tokens=7, sampling=GREEDY,
                                        ignore_eos=True)) for p in prompts]
    try:
        done = collect(engine, reqs)
    finally:
        for r in reqs:
            r.free()
    records, lost = engine.drain_steps()
    assert lost == 0
    for r, prompt in zip(reqs, prompts, strict=True):
        mine = [x for x in records if x.request_id == r.id]
        work = [x for x in mine if not x.finished]
        assert sum(x.n_prefill for x in work) == len(prompt) - done[r.id][2].n_cached
        assert sum(x.n_decode for x in work) == done[r.id][2].n_generated - 1
        assert mine[-1].finished and sum(x.finished for x in mine) == 1
        assert all(x.t_start_ns <= x.t_end_ns for x in mine)
        assert mine[-1].t_end_ns >= max(x.t_end_ns for x in work)
    # Requests shared steps: some step has more than one request in it.
    starts = [x.t_start_ns for x in records if not x.finished]
    assert len(starts) > len(set(starts))
    assert engine.drain_steps() == ([], 0)


def test_a_small_ring_loses_the_oldest_and_says_so(engine: NativeEngine) -> None:
    """11 records into a ring of 4: the last 4 stay, 7 counted lost (fails
    if an overrun dropped the newest instead)."""
    engine.enable_step_log(4)
    r = engine.submit(RequestParams(prompt=[5, 6, 7], max_tokens=10, sampling=GREEDY,
                                    ignore_eos=True))
    try:
        collect(engine, [r])
    finally:
        r.free()
    records, lost = engine.drain_steps()
    assert len(records) == 4 and records[-1].finished and lost == 10 + 1 - 4


def test_off_by_default_and_bounded(engine: NativeEngine) -> None:
    """Capacity 0 frees the log: nothing is recorded (fails if 0 kept it)."""
    engine.enable_step_log(0)
    r = engine.submit(RequestParams(prompt=[5, 6], max_tokens=2, sampling=GREEDY))
    try:
        collect(engine, [r])
    finally:
        r.free()
    assert engine.drain_steps() == ([], 0)
    with pytest.raises(errors.InvalidArgument):
        engine.enable_step_log(-1)


def test_score_requests_log_their_prefill_work(engine: NativeEngine) -> None:
    """An occlusion score request (explanations) runs as prefill chunks:
    its records add up to the prefill tokens it computed, and it ends with
    one FINISHED record, so its energy is counted like any other's.
    Checked that it can fail: committing a step's records after its
    finishes (at the end of publish_step) puts the end record before them."""
    from runtime.native import ScoreParams


    engine.enable_step_log(4096)
    prompt = list(range(3, 40))
    r = engine.submit_score(ScoreParams(prompt=prompt, target=[5, 6, 7],
                                        spans=[(1, 5), (10, 20)]))
    try:
        out = collect(engine, [r])[r.id][2]
    finally:
        r.free()
    records, lost = engine.drain_steps()
    mine = [x for x in records if x.request_id == r.id]
    assert lost == 0 and out.score is not None
    assert sum(x.n_prefill for x in mine if not x.finished) == out.score.prefill_tokens
    assert sum(x.n_decode for x in mine) == 0
    assert [x.finished for x in mine].count(True) == 1 and mine[-1].finished
