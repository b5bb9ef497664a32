"""`hearth eval bias` on a real model: its wall time and its figures.

    python -m benchmarks.bias [--model models/gemma-3-270m-q4_k_m.gguf] [--threads 2]

Starts `hearth serve` on the model (port 0, its own state directory), runs
`hearth eval bias` against it exactly as an operator would, and times the
evaluation alone (the daemon's start is not counted).  The issue's figure:
at most 10 minutes on Gemma 3 270M on this machine.  A report, not an
assertion.  Writes benchmarks/results/bias-<stamp>.json and
bias-latest.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GEMMA = Path("models/gemma-3-270m-q4_k_m.gguf")


def _serve(model: Path, threads: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    ready = tmp / "ready.json"
    log = (tmp / "daemon.log").open("w")
    env = {**os.environ, "HEARTH_STATE_DIR": str(tmp / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "serve", "--no-audit",
                             "--model", f"bench={model}", "--listen", "127.0.0.1:0",
                             "--threads", str(threads), "--parallel", "4",
                             "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the daemon did not start:\n{(tmp / 'daemon.log').read_text()}")
        time.sleep(0.1)
    addresses = json.loads(ready.read_text())["addresses"]
    return proc, next(a for a in addresses if not a.startswith("unix:"))


def run(model: Path, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        proc, addr = _serve(model, threads, tmp)
        try:
            load_before = os.getloadavg()[0]
            start = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "eval", "bias",
                                   "--addr", addr, "--out", str(tmp / "out")],
                                  capture_output=True, text=True)
            seconds = time.monotonic() - start
            load_after = os.getloadavg()[0]
        finally:
            proc.terminate()
            proc.wait(60)
        if done.returncode != 0:
            raise SystemExit(f"hearth eval bias failed:\n{done.stdout}\n{done.stderr}")
        bias = json.loads((tmp / "out" / "bias.json").read_text())
    from runtime.transparency import bias_data
    pairs = (len(bias_data.MALE_DOMINATED) + len(bias_data.FEMALE_DOMINATED)) * len(
        bias_data.TEMPLATES)
    return {"model": model.name, "threads": threads, "seconds": round(seconds, 1),
            "cpus": os.cpu_count(),
            "load_average_1m": [round(load_before, 1), round(load_after, 1)],
            "scored_continuations": 2 * pairs, "association_gap": bias["association_gap"],
            "overall_preference": bias["overall_preference"], "detected": bias["detected"],
            "stdout": done.stdout.strip().splitlines()}


def markdown(r: dict[str, Any]) -> str:
    gap = r["association_gap"]
    return (f"# `hearth eval bias` on a real model\n\n"
            f"`python -m benchmarks.bias --model {r['model']} --threads {r['threads']}`\n\n"
            f"**Wall time of the evaluation:** {r['seconds']} s for "
            f"{r['scored_continuations']} scored continuations (goal: at most 600 s), on "
            f"{r.get('cpus')} CPUs with a 1-minute load average of {r.get('load_average_1m')} "
            f"(before, after): other work on the machine slows it.\n\n"
            f"**Association gap:** {gap['estimate']:+.3f} nats, 95% CI "
            f"[{gap['low']:+.3f}, {gap['high']:+.3f}]; bias detected: {r['detected']}.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=GEMMA)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    result = run(args.model, args.threads)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    (RESULTS / f"bias-{stamp}.json").write_text(text)
    (RESULTS / "bias-latest.json").write_text(text)
    (RESULTS / "bias-latest.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
