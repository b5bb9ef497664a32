"""benchmarks/engine_profile.py: the step split from crafted step-log records, and a run
on the tiny model."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import engine_profile
from runtime.native import StepRecord

MS = 1_000_000


def _step(t0: int, t1: int, parts: list[tuple[int, int, int]]) -> list[StepRecord]:
    return [StepRecord(rid, t0 * MS, t1 * MS, prefill, decode, False)
            for rid, prefill, decode in parts]


def test_only_steps_where_every_stream_decodes_count_as_the_decode_phase() -> None:
    """Two streams: a prefill step for both (0-40 ms), one where stream 2 still prefills
    (40-60), two where both decode (60-70, 70-80), then stream 1 alone (80-85).  By hand:
    2 all-decode steps, 4 tokens in 20 ms (200 tok/s); 5 steps over 85 ms, 60 ms of it in
    llama_decode, so 5 ms per step outside.  Checked to fail: counting steps where any
    stream decodes adds the 40-60 and 80-85 steps (4 steps, 6 tokens over 45 ms), and
    counting finish records as steps adds one."""
    records = (_step(0, 40, [(1, 30, 0), (2, 10, 0)]) + _step(40, 60, [(1, 0, 1), (2, 20, 0)])
               + _step(60, 70, [(1, 0, 1), (2, 0, 1)]) + _step(70, 80, [(1, 0, 1), (2, 0, 1)])
               + _step(80, 85, [(1, 0, 1)])
               + [StepRecord(1, 85 * MS, 85 * MS, 0, 0, True)])
    p = engine_profile.profile(records, n=2, decode_s=0.060)
    assert (p.steps, p.all_decode_steps, p.all_decode_tokens) == (5, 2, 4)
    assert p.all_decode_s == pytest.approx(0.020) and p.wall_s == pytest.approx(0.085)
    assert "200.0 tok/s" in p.line() and "outside it 5.0 ms" in p.line()
    with pytest.raises(ValueError):
        engine_profile.profile([], n=2, decode_s=0.0)


def test_a_run_on_the_tiny_model(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3 streams of 4 tokens: the first tokens come from prefill, so at most 3 steps have
    every stream decoding, 3 tokens each."""
    assert engine_profile.main(["--model", str(tiny_model), "--n", "3", "--max-tokens", "4",
                                "--threads", "1"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"(\d+) steps in [\d.]+ s; (\d+) with every stream decoding: (\d+) tokens",
                      out)
    assert found, out
    steps, full, tokens = map(int, found.groups())
    assert steps >= 4 and 1 <= full <= 3 and tokens == 3 * full, out
