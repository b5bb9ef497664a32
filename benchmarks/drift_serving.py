"""What the drift watch costs a serving daemon: throughput with it on and off.

    python -m benchmarks.drift_serving [--model PATH] [--concurrency 8] [--repeat 3]
                                       [--batches 4] [--threads T]

Two Hearth daemons on the same model, threads and slots, started once each:
one as `hearth serve` (the watch off), one as `hearth serve --drift` (on,
with the [drift] defaults: 10% of requests sampled).  A run is `--batches`
rounds of N concurrent streaming requests over gRPC (distinct prompts of
20-60 tokens, 64 generated tokens each, EOS ignored, benchmarks/load.py's
workload); its figure is the generated tokens over the rounds' wall time.
The runs alternate between the two daemons (off on, on off, ...), both get
the same prompts in a repetition and fresh ones in the next, and each
daemon's figure is the median of `--repeat` runs.  Reported: both medians
and their ratio on/off (the issue's target: at least 0.98 at N = 8 on
Gemma), with how many requests the monitor observed, so a watch that never
ran cannot pass.

Over a benchmark this short the monitor is collecting its reference
(500 sampled requests at the defaults): per request that costs what
watching costs (the engine's signals of the sampled requests and the drift
worker's bookkeeping); the one-off calibration when a reference completes
(about a second of one core, on the drift worker) is not in the figure.

Writes benchmarks/results/drift-serving-<stamp>.{json,md} and
drift-serving-latest.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.lineup import Setup, hearth_command
from benchmarks.procs import ManagedProcess
from benchmarks.report import save_results
from benchmarks.serving import DEFAULT_MODEL, describe_machine, resolve_model, token_counter
from runtime.config import DriftConfig

MODES = ("off", "on")


def start(mode: str, setup: Setup, fraction: float | None) -> tuple[ManagedProcess, str]:
    """`fraction`: None for `--drift` (the defaults), else a [drift] table
    with that sample fraction (the tests use 1.0, to see every request)."""
    ready = setup.log_dir / f"drift-{mode}-ready.json"
    cmd = hearth_command(setup, ready)
    if mode == "on" and fraction is None:
        cmd.append("--drift")
    elif mode == "on":
        config = setup.log_dir / "drift-on.toml"
        config.write_text(f"[drift]\nenabled = true\nsample_fraction = {fraction}\n")
        cmd += ["--config", str(config)]
    proc = ManagedProcess(f"hearth-drift-{mode}", cmd, setup.log_dir)
    proc.wait_until(ready.exists, 180, "ready file")
    addrs = json.loads(ready.read_text())["addresses"]
    return proc, next(a for a in addrs if not a.startswith("unix:"))


def one_run(addr: str, prompts: list[list[str]], max_tokens: int) -> dict[str, Any]:
    """`prompts`: one list of N per round; the rounds run back to back."""
    tokens, wall, completed, errors = 0, 0.0, 0, set()
    for batch in prompts:
        level = load.summarize(len(batch), load.drive_hearth(addr, "bench", batch, max_tokens),
                               max_tokens)
        tokens += level.generated_tokens or 0
        wall += level.wall_s or 0.0
        completed += level.completed or 0
        errors.update(level.errors)
    return {"tok_s": tokens / wall if wall else None, "tokens": tokens, "wall_s": wall,
            "completed": completed, "streams": sum(len(b) for b in prompts),
            "errors": sorted(errors)}


def observed(addr: str) -> int:
    from runtime.client import HearthClient

    with HearthClient(addr, timeout=30) as c:
        return sum(int(d.observed) for d in c.get_model("bench").drift)


def measure(args: argparse.Namespace, model: Path, log_dir: Path) -> dict[str, Any]:
    n = args.concurrency
    count = token_counter(model)
    setup = Setup(model=model, threads=args.threads, max_tokens=args.max_tokens, ns=[n],
                  prompts={}, log_dir=log_dir, n_ctx=args.ctx, n_parallel=args.parallel)
    procs: dict[str, ManagedProcess] = {}
    addrs: dict[str, str] = {}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        for mode in MODES:
            procs[mode], addrs[mode] = start(mode, setup, args.sample_fraction)
        warm = load.make_prompts(n, count, rep=10_000)
        for mode in MODES:                      # page the weights in, build the graphs
            one_run(addrs[mode], [warm], 8)
        for rep in range(args.repeat):
            prompts = [load.make_prompts(n, count, rep=1 + rep * args.batches + b)
                       for b in range(args.batches)]
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for mode in order:
                runs[mode].append(one_run(addrs[mode], prompts, args.max_tokens))
                print(f"repetition {rep} {mode}: {runs[mode][-1]['tok_s']:.1f} tok/s",
                      file=sys.stderr, flush=True)
        watched = observed(addrs["on"])
    finally:
        for p in procs.values():
            p.stop()
    medians = {m: statistics.median(r["tok_s"] or 0.0 for r in runs[m]) for m in MODES}
    return {"concurrency": n, "batches": args.batches, "repeat": args.repeat,
            "sample_fraction": args.sample_fraction or DriftConfig().sample_fraction,
            "max_tokens": args.max_tokens, "threads": args.threads,
            "parallel": args.parallel, "ctx": args.ctx,
            "tok_s_median": medians,
            "ratio_on_off": medians["on"] / medians["off"] if medians["off"] else None,
            "runs": runs, "requests_observed_by_monitor": watched,
            "load_average_after": os.getloadavg()}


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    ok = r["ratio_on_off"] is not None and r["ratio_on_off"] >= 0.98
    return "\n".join([
        f"# The drift watch's serving cost ({r['timestamp']})", "",
        f"`{r['command']}` on `{r['model']}`, {m.get('cpu', '?')}, {r['threads']} threads; "
        f"N = {r['concurrency']} streams x {r['max_tokens']} tokens, {r['batches']} rounds "
        f"per run, median of {r['repeat']} interleaved runs per daemon.", "",
        "| drift watch | tokens/s (median) |", "|---|---|",
        f"| off (`hearth serve`) | {r['tok_s_median']['off']:.1f} |",
        f"| on (`hearth serve --drift`, sample fraction {r['sample_fraction']}) | "
        f"{r['tok_s_median']['on']:.1f} |", "",
        f"**Ratio on/off: {r['ratio_on_off']:.3f}** (target >= 0.98: "
        f"{'met' if ok else 'NOT met'}); the monitor observed "
        f"{r['requests_observed_by_monitor']} sampled requests.", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drift_serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batches", type=int, default=4, help="rounds of N requests per run")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--parallel", type=int, default=32, help="slots of each daemon")
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--sample-fraction", type=float,
                   help="the watch's [drift] sample_fraction (default: `--drift`'s, "
                        f"{DriftConfig().sample_fraction})")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    model = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="hearth-drift-serving-") as tmp:
        result = measure(args, model, Path(tmp))
    result.update({"schema": "hearth-drift-serving-benchmark/1",
                   "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                   "machine": describe_machine(), "model": model.name,
                   "command": "python -m benchmarks.drift_serving " + " ".join(
                       argv if argv is not None else sys.argv[1:])})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    save_results(args.out, "drift-serving", stamp, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
