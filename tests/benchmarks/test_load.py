"""The serving benchmark's figures from crafted stream records: no model, no peer."""
from __future__ import annotations

import pytest

from benchmarks.load import (
    LevelResult,
    StreamRecord,
    decode_rate,
    inter_token_gaps,
    make_prompts,
    median_run,
    summarize,
)


def test_a_chunk_of_k_tokens_counts_its_gap_once_then_k_minus_1_zeros() -> None:
    """Checked to fail: counting the gap once per token of the chunk (k times) gives
    [0.5, 0.5, 0.5, 1.0]; dropping the zeros gives [0.5, 1.0]."""
    assert inter_token_gaps([(1.0, 1), (1.5, 3), (2.5, 1)]) == [0.5, 0.0, 0.0, 1.0]


def test_the_first_token_is_no_gap_but_the_rest_of_its_chunk_are_zeros() -> None:
    """Checked to fail: counting the first arrival's gap (from nothing) or leaving out
    its chunk's k-1 zeros both change the list."""
    assert inter_token_gaps([(1.0, 2), (2.0, 1)]) == [0.0, 1.0]
    assert inter_token_gaps([(1.0, 1)]) == []
    assert inter_token_gaps([]) == []


def test_chunks_without_tokens_are_not_arrivals() -> None:
    """Checked to fail: without the `k > 0` filter the empty chunk at 1.2 splits the
    gap into 0.2 and 0.8."""
    assert inter_token_gaps([(1.0, 1), (1.2, 0), (2.0, 1)]) == [1.0]


def _two_streams() -> list[StreamRecord]:
    # A: sent at 0, one token at each of 1, 2, 3 (no count from the peer)
    a = StreamRecord(sent=0.0, arrivals=[(1.0, 1), (2.0, 1), (3.0, 1)], end=3.0,
                     finish="length")
    # B: sent at 0.5, two tokens at 2.0 then one at 4.0; the peer says 3 tokens
    b = StreamRecord(sent=0.5, arrivals=[(2.0, 2), (4.0, 1)], tokens=3, end=4.5,
                     finish="length")
    return [a, b]


def test_summarize_figures_from_crafted_records() -> None:
    """Every figure worked out by hand.  Checked to fail: measuring the wall time from the
    last request sent (4.0 s) instead of the first, taking TTFT from `end`, or pooling
    the first chunk's gap as an ITL each break an assertion."""
    level = summarize(2, _two_streams(), max_tokens=3)
    assert level.n == 2 and level.streams == 2
    assert level.generated_tokens == 6
    assert level.wall_s == pytest.approx(4.5)
    assert level.agg_tok_s == pytest.approx(6 / 4.5)
    # TTFTs 1.0 and 1.5; numpy's linear percentiles
    assert level.ttft_p50_s == pytest.approx(1.25)
    assert level.ttft_p99_s == pytest.approx(1.0 + 0.99 * 0.5)
    # ITLs: A gives 1, 1; B gives 0 (the rest of its first chunk), 2
    assert level.itl_p50_s == pytest.approx(1.0)
    assert level.itl_p99_s == pytest.approx(1.0 + 0.97 * 1.0)
    assert level.completed == 2
    assert level.finish_reasons == {"length": 2}
    assert level.errors == []


def test_decode_rate_counts_only_while_every_stream_decodes() -> None:
    """By hand: B's first token comes at 2.0 and A's last at 3.0; between them A's token
    at 3.0 arrives (B's chunk at 2.0 is the window's start, not in it): 1 token in 1 s.
    Checked to fail: opening the window at the first stream's first token (1.0) counts
    A's token at 2.0 and B's two as well (4 tokens in 2 s: 2.0)."""
    assert decode_rate(_two_streams()) == pytest.approx(1.0)
    level = summarize(2, _two_streams(), max_tokens=3)
    assert level.decode_tok_s == pytest.approx(1.0)
    steady = [StreamRecord(arrivals=[(0.1 * i + d, 1) for i in range(11)]) for d in (0, 0.05)]
    # (0.05, 1.0]: the first stream's 0.1 .. 1.0 (10) and the second's 0.15 .. 0.95 (9)
    assert decode_rate(steady) == pytest.approx(19 / 0.95)
    one_token = StreamRecord(arrivals=[(1.0, 1)])
    assert decode_rate([*_two_streams(), one_token]) is None
    assert decode_rate([]) is None


def test_the_peers_own_token_count_wins_over_the_chunks() -> None:
    """Checked to fail: summing the chunks instead of `tokens` gives 2, not 64."""
    rec = StreamRecord(sent=0.0, arrivals=[(1.0, 1), (2.0, 1)], tokens=64, end=2.0)
    level = summarize(1, [rec], max_tokens=64)
    assert level.generated_tokens == 64
    assert level.completed == 1


def test_short_failed_and_empty_streams_do_not_complete() -> None:
    """A stream that ended early, one with an error and one with no token at all: none
    completed; the empty one gives no TTFT; errors are listed once each.  Checked to
    fail: dropping the `error is None` or the `>= max_tokens` test of `completed`."""
    short = StreamRecord(sent=0.0, arrivals=[(1.0, 1)], end=1.0, finish="stop")
    broken = StreamRecord(sent=0.0, arrivals=[(0.5, 1), (0.7, 1)], end=0.8,
                          error="HTTP 503")
    empty = StreamRecord(sent=0.0, end=0.2, error="HTTP 503")
    level = summarize(3, [short, broken, empty], max_tokens=2)
    assert level.completed == 0
    assert level.streams == 3
    assert level.ttft_p50_s == pytest.approx(0.75)  # 1.0 and 0.5: the empty one has none
    assert level.errors == ["HTTP 503"]
    assert level.finish_reasons == {"stop": 1, "none": 2}
    assert level.generated_tokens == 3


def test_no_records_gives_no_throughput() -> None:
    """Checked to fail: dividing by a zero wall time raises instead."""
    level = summarize(1, [], max_tokens=8)
    assert level.agg_tok_s is None and level.ttft_p50_s is None and level.completed == 0


def _level(tok_s: float | None, ttft: float, rss: float | None) -> LevelResult:
    return LevelResult(n=4, agg_tok_s=tok_s, ttft_p50_s=ttft, completed=4, streams=4,
                       peak_rss_mb=rss)


def test_median_run_keeps_the_median_repetition_whole() -> None:
    """Checked to fail: taking the last or the fastest run, or the median run's own peak
    RSS instead of the highest, breaks an assertion."""
    runs = [_level(30.0, 0.1, 500.0), _level(10.0, 0.9, 520.0), _level(20.0, 0.5, 510.0)]
    chosen = median_run(runs)
    assert chosen.agg_tok_s == 20.0
    assert chosen.ttft_p50_s == 0.5  # its own TTFT, not a median of the others'
    assert chosen.peak_rss_mb == 520.0
    assert chosen.extra["runs_agg_tok_s"] == [30.0, 10.0, 20.0]
    assert chosen.extra["runs_ttft_p50_s"] == [0.1, 0.9, 0.5]
    assert chosen.extra["repetitions"] == 3
    assert runs[2].extra == {}  # the input is not changed


def test_median_run_of_an_even_count_takes_the_lower_middle_and_none_sorts_first() -> None:
    """Checked to fail: `len // 2` picks 30.0 of the pair; sorting None last (after every
    throughput) picks 30.0 of the triple."""
    assert median_run([_level(30.0, 0, None), _level(20.0, 0, None)]).agg_tok_s == 20.0
    runs = [_level(None, 0, None), _level(20.0, 0, None), _level(30.0, 0, None)]
    assert median_run(runs).agg_tok_s == 20.0
    with pytest.raises(ValueError):
        median_run([])


def test_every_repetition_gets_fresh_prompts() -> None:
    """Prompts differ within a level, across levels and across repetitions, and stay in
    the 20-60 token range by the counter given.  Checked to fail: dropping `rep` from the
    seed and the label makes repetitions 0 and 1 equal."""
    def count(text: str) -> int:
        return len(text.split())

    reps = [make_prompts(4, count, rep=r) for r in range(3)]
    every = [p for prompts in reps for p in prompts] + make_prompts(8, count)
    assert len(set(every)) == len(every)
    assert all(20 <= count(p) <= 60 for p in every)
