"""The drift watch on real daemons: `hearth drift simulate` over seeds.

    python -m benchmarks.drift_loop [--seeds 3] [--sites 2] [--requests 2000]
                                    [--shift 0.2] [--model PATH] [--loop]

A daemon-level cross-check of benchmarks/drift.py (which runs the same
monitor in process over 20 seeds, because 20 daemon runs of 2,000 requests
take hours on two cores):

* null runs: `hearth drift simulate --no-federation --null`, `--requests`
  requests per site, every alarm onset a false alarm; reported per 10,000
  watched requests (those after each site's reference), beside 1/ERT;
* shift runs: `--no-federation --shift F`, the delay of each site's first
  alarm after the shift;
* `--loop`: one run of the whole loop (`hearth drift simulate --sites 3`,
  the issue's "done when" run), its JSON as it printed it.

Each run's JSON is kept.  Writes benchmarks/results/drift-loop-<stamp>.{json,md}
and drift-loop-latest.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.report import save_results

REFERENCE = 200             # drift simulate's daemons: reference_size
BEFORE = 300                # requests before the shift in shift runs (as the command's default)


def simulate(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "runtime.cli.main", "drift", "simulate", *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd[3:])}` exited {proc.returncode}: "
                         f"{proc.stderr[-2000:]}")
    out = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{' '.join(args)}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drift_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--requests", type=int, default=2000, help="per site, in null runs")
    p.add_argument("--shift", type=float, default=0.2)
    p.add_argument("--model", help="GGUF (default: the generated tiny model)")
    p.add_argument("--loop", action="store_true", help="also one run of the whole loop")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    common = ["--sites", str(args.sites), "--no-federation",
              *(["--model", args.model] if args.model else [])]
    null_runs = [simulate(*common, "--null", "--seed", str(s),
                          "--requests-before", str(BEFORE),
                          "--requests-after", str(args.requests - BEFORE))
                 for s in range(args.seeds)]
    shift_runs = [simulate(*common, "--shift", str(args.shift), "--seed", str(s))
                  for s in range(args.seeds)]
    loop = simulate("--sites", "3", "--shift", str(args.shift),
                    *(["--model", args.model] if args.model else [])) if args.loop else None
    alarms = sum(r["false_alarms"] for r in null_runs)
    watched = sum(n - REFERENCE for r in null_runs for n in r["requests"].values())
    delays = [d for r in shift_runs for d in r["detection_delay_requests"].values()]
    found = sorted(d for d in delays if d is not None)
    ert = null_runs[0]["drift"]["ert_requests"] if null_runs else None
    result = {
        "schema": "hearth-drift-loop-benchmark/1",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.drift_loop " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "model": args.model or "tiny (generated)", "sites": args.sites, "seeds": args.seeds,
        "null": {"false_alarms": alarms, "watched_requests": watched,
                 "per_10k_watched": 1e4 * alarms / max(1, watched),
                 "target_per_10k": 1e4 / ert if ert else None},
        "shift": {"fraction": args.shift, "delays": delays,
                  "detected": len(found), "runs": len(delays),
                  "median_delay": statistics.median_low(found) if found else None},
        "loop": loop, "null_runs": null_runs, "shift_runs": shift_runs}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    save_results(args.out, "drift-loop", stamp, result, markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    n, s = r["null"], r["shift"]
    lines = [f"# The drift watch on real daemons ({r['timestamp']})", "",
             f"`{r['command']}` on {r['model']}: {r['seeds']} seeds of {r['sites']} sites' "
             "daemons (`hearth drift simulate --no-federation`).", "",
             f"**False alarms:** {n['false_alarms']} in {n['watched_requests']} watched "
             f"requests: {n['per_10k_watched']:.2f} per 10,000 (calibrated target "
             f"{n['target_per_10k']}).", "",
             f"**Detection delay** after a {100 * s['fraction']:.0f}% shift: median "
             f"{s['median_delay']} requests; detected {s['detected']}/{s['runs']}; "
             f"all: {s['delays']}.", ""]
    if r["loop"] is not None:
        lines += ["**The whole loop** (`hearth drift simulate --sites 3`):", "",
                  "```json", json.dumps(r["loop"], sort_keys=True), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
