"""Goals judged on the tuned peers with the defaults' ratios beside them, honest labels
and memory, from crafted results (no model, no peer)."""
from __future__ import annotations

from typing import Any

import pytest

from benchmarks.lineup import DEFAULTS, PEERS, REFERENCE, SUBJECT, TUNED
from benchmarks.load import LevelResult
from benchmarks.peers import PeerResult, finish_memory
from benchmarks.report import markdown, memory_lines, ratios, reference_line, to_json

MB = 1024 * 1024


def _peer(key: str, figures: dict[int, tuple[float, float]], **info: Any) -> PeerResult:
    """figures: N -> (aggregate tok/s, TTFT p50)."""
    spec = PEERS[key]
    return PeerResult(key=key, label=spec.label, variant=spec.variant, info=dict(info),
                      levels=[LevelResult(n=n, agg_tok_s=tok, ttft_p50_s=ttft, completed=n,
                                          streams=n, peak_rss_mb=600.0)
                              for n, (tok, ttft) in figures.items()])


def _results() -> list[PeerResult]:
    return [
        _peer("batched-bench", {1: (42.0, 0.0), 8: (70.0, 0.0), 16: (72.0, 0.0)}),
        _peer("llama-cpp-python", {1: (28.0, 0.2)}),
        _peer("llama-cpp-python-tuned", {1: (40.0, 0.2)}),
        # defaults slower than Hearth, tuned faster: the goal must MISS
        _peer("llama-server", {1: (30.0, 0.2), 8: (60.0, 1.4), 16: (57.0, 2.7)}),
        _peer("llama-server-tuned", {1: (33.0, 0.2), 8: (66.0, 1.0), 16: (70.0, 2.0)}),
        _peer("hearth", {1: (36.0, 0.21), 8: (62.0, 1.2), 16: (75.0, 2.1)},
              idle_rss_mb=500.0, kv_allocated_mb=60.0, kv_upper_bound_mb=144.0),
    ]


def test_goals_are_judged_on_the_tuned_peer_with_the_defaults_beside() -> None:
    """Checked to fail: dividing by the defaults peer (llama-server, 60 tok/s) passes the
    N=8 goal; the tuned peer (66 tok/s) misses it."""
    goals = {g.name: g for g in ratios(_results())}
    n8 = goals["Hearth ÷ llama-server, aggregate tok/s at N=8"]
    assert n8.against == "llama-server-tuned" and n8.defaults_against == "llama-server"
    assert n8.value == pytest.approx(62 / 66) and n8.passed is False
    assert n8.defaults_value == pytest.approx(62 / 60)
    assert "against llama-server (defaults, not judged)" in n8.line()
    n16 = goals["Hearth ÷ llama-server, aggregate tok/s at N=16"]
    assert n16.value == pytest.approx(75 / 70) and n16.passed is False  # goal 1.1
    one = goals["Hearth ÷ llama-cpp-python in-process, tok/s at N=1"]
    assert one.value == pytest.approx(36 / 40) and one.passed is False
    assert one.defaults_value == pytest.approx(36 / 28)
    ttft = goals["Hearth ÷ llama-server, TTFT p50 at N=8"]
    assert ttft.value == pytest.approx(1.2 / 1.0) and ttft.passed is False
    assert ttft.defaults_value == pytest.approx(1.2 / 1.4)


def _meta() -> dict[str, Any]:
    return {"timestamp": "t", "machine": {"cpu": "cpu", "usable_cores": 2},
            "git": {"commit": "0123456789abcdef", "dirty": False},
            "model": {"name": "gemma.gguf"},
            "parameters": {"concurrency": [1, 8, 16], "repeat": 3, "threads": 2,
                           "max_tokens": 64},
            "hearth_settings": {"flash_attn": "on", "kv_unified": True, "source": "probe"}}


def test_decode_only_is_judged_against_batched_bench_s_tg() -> None:
    """Checked to fail: judging Hearth's aggregate (62 tok/s at N=8, prompt processing
    included) instead of its decode-only rate (66) against S_TG (70) gives 0.886, a MISS;
    the decode-only rate gives 0.943, a PASS."""
    results = _results()
    for p in results:
        for level in p.levels:
            level.decode_tok_s = level.agg_tok_s + (4.0 if p.key == "hearth" else 0.0)
    goals = {g.name: g for g in ratios(results)}
    n8 = goals["Hearth decode-only ÷ llama-batched-bench S_TG at N=8"]
    assert n8.value == pytest.approx(66 / 70) and n8.passed is True
    assert n8.against == "batched-bench"
    n16 = goals["Hearth decode-only ÷ llama-batched-bench S_TG at N=16"]
    assert n16.value == pytest.approx(79 / 72) and n16.passed is True
    md = markdown(_meta(), results, list(goals.values()))
    table = md.split("## Decode-only tokens/s")[1].split("##")[0]
    assert "| 70.0 | 72.0 |" in table and "| 66.0 | 79.0 |" in table


def test_a_missing_tuned_peer_leaves_the_goal_unjudged() -> None:
    """Checked to fail: falling back to the defaults peer would judge it."""
    results = [p for p in _results() if p.key != "llama-server-tuned"]
    n8 = next(g for g in ratios(results) if g.name.endswith("N=8") and "tok/s" in g.name)
    assert n8.value is None and n8.passed is None
    assert n8.defaults_value == pytest.approx(62 / 60)
    assert "n/a against llama-server-tuned" in n8.line()


def test_rss_beyond_model_and_kv_subtracts_the_kv_actually_allocated() -> None:
    """Checked to fail: subtracting Models.Get's upper bound (144 MB) gives 215 MB, not
    299 MB, at peak."""
    hearth = _results()[-1]
    finish_memory(hearth, model_bytes=241 * MB)
    assert hearth.info["peak_rss_mb"] == 600.0
    assert hearth.info["rss_beyond_model_kv_peak_mb"] == pytest.approx(600 - 241 - 60)
    assert hearth.info["rss_beyond_model_kv_idle_mb"] == pytest.approx(500 - 241 - 60)
    goal = ratios([hearth])[-1]
    assert goal.value == pytest.approx(299.0) and goal.passed is False
    line = memory_lines([hearth])[0]
    assert "KV allocated 60 MB" in line and "upper bound 144 MB" in line


def test_no_kv_figure_no_beyond_figure() -> None:
    """Without the KV llama.cpp allocated there is no honest "beyond" figure.  Checked to
    fail: treating a missing KV as 0."""
    peer = _peer("llama-server", {8: (60.0, 1.0)}, idle_rss_mb=400.0)
    finish_memory(peer, model_bytes=241 * MB)
    assert "rss_beyond_model_kv_peak_mb" not in peer.info
    assert memory_lines([peer]) == []


def test_batched_bench_is_labelled_a_reference_and_said_where_it_is_above() -> None:
    """Checked to fail: swapping the comparison (`ref < h`) lists N=16 as above Hearth."""
    line = reference_line(_results(), [1, 8, 16])
    assert line is not None
    assert "reference rather than a bound" in line
    assert "0.86 at N=1" in line  # 36 / 42
    assert "it is above Hearth at N = 1, 8;" in line
    assert "Hearth is above it at N = 16." in line


def test_markdown_and_json_state_both_ratios() -> None:
    """Checked to fail: leaving the defaults column out of the goals table."""
    results = _results()
    for p in results:
        finish_memory(p, model_bytes=241 * MB)
    meta = _meta()
    goals = ratios(results)
    text = markdown(meta, results, goals)
    assert "against the tuned peer (judged)" in text and "against the peer's defaults" in text
    assert "| Hearth ÷ llama-server, aggregate tok/s at N=8 | >= 1.1 | 0.939 | MISS" in text
    assert "| 1.033 |" in text
    assert "median of 3 repetitions" in text and "smoke run" not in text
    assert "`0123456789ab`" in text
    doc = to_json(meta, results, goals)
    n8 = doc["ratios"][0]
    assert (n8["against"], n8["defaults_against"]) == ("llama-server-tuned", "llama-server")
    assert {p["variant"] for p in doc["peers"]} == {REFERENCE, DEFAULTS, TUNED, SUBJECT}
    meta["parameters"]["repeat"] = 1
    assert "smoke run" in markdown(meta, results, goals)
