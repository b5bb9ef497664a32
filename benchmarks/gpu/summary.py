"""The GPU goals from a serving benchmark's JSON (benchmarks/serving.py):
aggregate tokens/s at N=16 and N=64 at least 1.1x llama-server's CUDA build
(its tuned run), TTFT p50 no worse, no stream lost.

    python -m benchmarks.gpu.summary SERVING_JSON [--out gpu-summary.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

GOAL_NS = (16, 64)
THROUGHPUT_GOAL = 1.1
PEER = "llama-server-tuned"


def _levels(doc: dict[str, Any], key: str) -> dict[int, dict[str, Any]]:
    for p in doc.get("peers", []):
        if p.get("key") == key and p.get("status") == "ok":
            return {lv["n"]: lv for lv in p.get("levels", [])}
    return {}


def verdicts(doc: dict[str, Any]) -> list[str]:
    """One line per goal: PASS, FAIL or n/a with the figures."""
    hearth, peer = _levels(doc, "hearth"), _levels(doc, PEER)
    lines = []
    for n in GOAL_NS:
        h, p = hearth.get(n), peer.get(n)
        if not h or not p:
            lines.append(f"N={n}: n/a (hearth {'ok' if h else 'missing'}, "
                         f"{PEER} {'ok' if p else 'missing'})")
            continue
        ratio = h["agg_tok_s"] / p["agg_tok_s"] if p["agg_tok_s"] else float("inf")
        ttft = h["ttft_p50_s"] / p["ttft_p50_s"] if p["ttft_p50_s"] else float("inf")
        lines.append(f"N={n}: {h['agg_tok_s']:.0f} vs {p['agg_tok_s']:.0f} tok/s = {ratio:.2f}x "
                     f"(goal >= {THROUGHPUT_GOAL}) {'PASS' if ratio >= THROUGHPUT_GOAL else 'FAIL'}"
                     f"; TTFT p50 {h['ttft_p50_s'] * 1e3:.0f} vs {p['ttft_p50_s'] * 1e3:.0f} ms "
                     f"= {ttft:.2f}x (goal <= 1.0) {'PASS' if ttft <= 1.0 else 'FAIL'}")
    lost = [(n, lv["streams"] - lv["completed"]) for n, lv in sorted(hearth.items())
            if lv["completed"] < lv["streams"]]
    lines.append("no stream lost: PASS" if hearth and not lost else
                 f"streams lost (N, count): {lost or 'hearth not measured'}: FAIL")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("serving_json", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    doc = json.loads(args.serving_json.read_text())
    text = "# GPU goals\n\n" + "".join(f"- {line}\n" for line in verdicts(doc))
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
