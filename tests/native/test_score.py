"""Occlusion scoring in C (score.c) on the tiny model: teacher-forced target
log-probabilities, the prefix reuse between variants, and the cost the
engine counts."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.native import (
    EngineParams,
    FinishReason,
    NativeEngine,
    Output,
    RequestParams,
    Sampling,
    ScoreParams,
)
from tests.native.helpers import collect, wait_ready

TEXT = ("the cat sat on the mat . the dog ran to the park . a bird sang in the tree . "
        "the sun was warm and the day was long .")


@pytest.fixture()
def engine(tiny_model: Path) -> Iterator[NativeEngine]:
    """A fresh engine per test (nothing cached), prefill in chunks of 8 so
    every variant spans several steps."""
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=2048, n_parallel=2,
                                  n_threads=2, n_threads_batch=2, max_queue=8, prefill_chunk=8,
                                  burst_window_us=0))
    yield e
    e.close()


def score(engine: NativeEngine, params: ScoreParams) -> Output:
    r = engine.submit_score(params)
    try:
        return collect(engine, [r])[r.id][2]
    finally:
        r.free()


def spans_of(n_prompt: int, width: int) -> list[tuple[int, int]]:
    """Consecutive spans of `width` tokens after the BOS token."""
    return [(a, min(a + width, n_prompt)) for a in range(1, n_prompt, width)]


def test_full_prompt_score_is_the_greedy_answers_own_logprob(engine: NativeEngine) -> None:
    """Teacher-forcing the greedy answer gives back the log-probabilities
    the generation reported for it (an oracle independent of score.c).
    Fails if the scored rows are off by one position (checked by shifting
    `first` by one in hearth_score_pack)."""
    prompt = engine.tokenize(TEXT)
    r = engine.submit(RequestParams(prompt=prompt, max_tokens=6, sampling=Sampling(temperature=0),
                                    logprobs=0, ignore_eos=True))
    gen: list[int] = []
    lps: list[float] = []
    while True:
        wait_ready(engine)
        taken = r.take()
        gen.extend(taken.tokens)
        lps.extend(lp.logprob for lp in taken.logprobs)
        if taken.finished:
            break
    r.free()
    assert len(gen) == 6
    out = score(engine, ScoreParams(prompt=prompt, target=gen))
    assert out.finish_reason is FinishReason.STOP and out.score is not None
    assert out.score.logprob[0] == pytest.approx(sum(lps), abs=1e-3)
    assert out.n_generated == 0 and not out.tokens


def test_each_variant_matches_scoring_it_from_scratch(engine: NativeEngine,
                                                      tiny_model: Path) -> None:
    """The reused prefix KV gives what computing the variant alone gives.
    Fails if a variant kept KV past what it shares with the previous one
    (checked by rewinding to the reuse limit instead of the common prefix
    in hearth_score_advance)."""
    prompt = engine.tokenize(TEXT)
    target = engine.tokenize(" the end", add_special=False)
    spans = spans_of(len(prompt), 5)
    out = score(engine, ScoreParams(prompt=prompt, target=target, spans=spans))
    assert out.score is not None and len(out.score.logprob) == len(spans) + 1
    fresh = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=1024, n_parallel=1,
                                      n_threads=2, n_threads_batch=2))
    try:
        for i, (a, b) in enumerate([(len(prompt), len(prompt)), *spans]):
            variant = prompt[:a] + prompt[b:]
            alone = score(fresh, ScoreParams(prompt=variant, target=target))
            assert alone.score is not None
            assert out.score.logprob[i] == pytest.approx(alone.score.logprob[0], abs=2e-3), i
    finally:
        fresh.close()
    # The spans do change the score (the test would pass vacuously otherwise).
    assert max(abs(x - out.score.logprob[0]) for x in out.score.logprob[1:]) > 1e-3


def test_s_spans_cost_at_most_s_plus_one_prefills(engine: NativeEngine) -> None:
    """The engine's own counters: one prefill per variant however many
    chunks it takes (prefill_chunk=8 splits each), and each variant
    computes only what follows its span's start.  Fails if prefills were
    counted per chunk, or if variants recomputed their prefix (checked by
    making hearth_score_advance keep 0 tokens: prefill_tokens became the
    naive total and this failed)."""
    prompt = engine.tokenize(TEXT)
    target = engine.tokenize(" the end", add_special=False)
    spans = spans_of(len(prompt), 4)
    n, t, s = len(prompt), len(target), len(spans)
    out = score(engine, ScoreParams(prompt=prompt, target=target, spans=spans))
    assert out.score is not None
    assert out.score.prefills <= s + 1
    # Whole prompt from scratch, then each variant from its span's start.
    expected = (n + t) + sum((n - b) + t for _, b in spans)
    assert out.score.prefill_tokens == expected
    naive = (n + t) + sum(n - (b - a) + t for a, b in spans)
    assert out.score.prefill_tokens + out.score.reused_tokens == naive
    assert out.score.prefill_tokens < 0.75 * naive


def test_a_generation_alongside_is_unchanged(engine: NativeEngine) -> None:
    """A score request shares the steps with generations; their output is
    what it is alone."""
    prompt = engine.tokenize("one two three four")
    params = RequestParams(prompt=prompt, max_tokens=12, sampling=Sampling(temperature=0),
                           ignore_eos=True)
    r = engine.submit(params)
    alone = collect(engine, [r])[r.id][0]
    r.free()
    g = engine.submit(params)
    sc = engine.submit_score(ScoreParams(prompt=engine.tokenize(TEXT),
                                         target=engine.tokenize(" x", add_special=False),
                                         spans=spans_of(20, 3)))
    res = collect(engine, [g, sc])
    assert res[g.id][0] == alone
    assert res[sc.id][2].score is not None
    g.free()
    sc.free()


@pytest.mark.parametrize("spans", [[(0, 0)], [(3, 2)], [(5, 999)], [(0, 999)]])
def test_bad_spans_are_invalid_arguments(engine: NativeEngine,
                                         spans: list[tuple[int, int]]) -> None:
    prompt = engine.tokenize("a b c d")
    whole = [(a, len(prompt)) if b == 999 and a == 0 else (a, b) for a, b in spans]
    with pytest.raises(errors.InvalidArgument):
        engine.submit_score(ScoreParams(prompt=prompt, target=[prompt[-1]], spans=whole))


def test_an_empty_target_is_an_invalid_argument(engine: NativeEngine) -> None:
    with pytest.raises(errors.InvalidArgument):
        engine.submit_score(ScoreParams(prompt=engine.tokenize("a b"), target=[]))
