"""benchmarks/gpu/summary.py judges the GPU goals from a serving JSON."""
from __future__ import annotations

from benchmarks.gpu.summary import verdicts


def _peer(key: str, levels: list[tuple[int, float, float, int]]) -> dict:
    return {"key": key, "status": "ok", "levels": [
        {"n": n, "agg_tok_s": tok, "ttft_p50_s": ttft, "streams": n, "completed": done}
        for n, tok, ttft, done in levels]}


def test_goals_pass_fail_and_lost_streams() -> None:
    """Checked by flipping the >= in the throughput verdict: the first
    assertion then fails."""
    doc = {"peers": [
        _peer("hearth", [(16, 1200.0, 0.05, 16), (64, 3000.0, 0.20, 63)]),
        _peer("llama-server-tuned", [(16, 1000.0, 0.06, 16), (64, 3000.0, 0.10, 64)]),
    ]}
    n16, n64, lost = verdicts(doc)
    assert "1.20x" in n16 and n16.count("PASS") == 2
    assert "1.00x" in n64 and n64.count("FAIL") == 2
    assert "(64, 1)" in lost and lost.endswith("FAIL")


def test_a_missing_peer_is_not_a_pass() -> None:
    lines = verdicts({"peers": [_peer("hearth", [(16, 1.0, 1.0, 16)])]})
    assert lines[0].startswith("N=16: n/a") and "PASS" not in lines[0]
