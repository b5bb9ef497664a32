"""Drift watch: its false-alarm rate and its detection delay, on real signals.

    python -m benchmarks.drift [--model PATH] [--seeds 20] [--requests 2000]
                               [--shift 0.2] [--pool 400] [--domains clinical]
                               [--quick]

First the engine computes the drift signals (native/src/signals.c) of
`--pool` prompts from each of two domains.  `--domains clinical` (the
default) takes the shift `hearth drift simulate` makes: the home domain is
site 0's notes of the synthetic clinical corpus (runtime/federation/corpus.py),
the new domain notes of a specialty no site of a 3-site federation has.
`--domains generic` takes everyday sentences against arithmetic and
code-like text, a larger shift.  Then streams of requests are resampled from those pools and fed to
the monitor exactly as the daemon feeds it (runtime/drift/service.py's
observation_of and the projection, then DriftMonitor with the [drift]
defaults unless overridden):

* null runs: `--seeds` streams of `--requests` requests, all from the home
  pool; every alarm is a false alarm.  Reported: alarms per 10,000 watched
  requests (after the reference), beside the calibrated target 1/ERT.  This
  is a report, not an assertion.
* shift runs: the reference from the home pool, then a fraction `--shift`
  of the traffic from the new pool; the detection delay is the number of
  requests from the shift to the alarm's onset (censored at
  `--after` requests), per signal alone and for all signals combined.

Requests here are sampled requests: the monitor sees only those.  Writes
benchmarks/results/drift-<stamp>.json and drift-latest.{json,md}.

    python -m benchmarks.drift --cost [--model PATH] [--concurrency 8]
                                      [--fraction 0.1] [--repeat 10]

measures instead what the signals cost the engine (the daemon-level figure,
the watch's whole cost to serving, is benchmarks/drift_serving.py's): rounds of N concurrent
requests (distinct prompts, 64 tokens each), alternating between the
monitor off (no request asks for signals) and on (each request asks with
probability --fraction), on one engine built with drift_rows.  Reported:
generated tokens per second, each mode's total and median over rounds, and
their ratio (the issue's target: on/off >= 0.98 at the default fraction, on
Gemma at N = 8).  Writes drift-cost-<stamp>.json and drift-cost-latest.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import DriftConfig
from runtime.drift.monitor import DriftMonitor, DriftSettings
from runtime.drift.service import Projector, observation_of, settings_of
from runtime.drift.signals import BY_NAME, Observation
from runtime.events import RequestFinished, RequestSignals
from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling

RESULTS = Path(__file__).resolve().parent / "results"
SUBJECTS = ["the cat", "my neighbour", "a small dog", "our teacher", "the old man", "my sister"]
VERBS = ["likes", "walks to", "reads about", "talks about", "looks at", "waits for"]
OBJECTS = ["the park", "a good book", "the morning sun", "green tea", "the river", "dinner"]
CODE = ["def f(x):", "return x *", "for i in range(", "if a == b:", "x = [", "print("]


def home_prompt(rng: random.Random) -> str:
    parts = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
             for _ in range(rng.randint(2, 4))]
    return ", and ".join(parts) + "."


def new_prompt(rng: random.Random) -> str:
    if rng.random() < 0.5:
        terms = " + ".join(str(rng.randrange(1000)) for _ in range(rng.randint(3, 8)))
        return f"compute {terms} = ?"
    return " ".join(rng.choice(CODE) + str(rng.randrange(100)) for _ in range(rng.randint(3, 6)))


def domain_prompts(domains: str, pool: int) -> tuple[list[str], list[str]]:
    """(home, new) prompts: the simulation's clinical shift, or the generic one."""
    if domains == "clinical":
        from runtime.cli.drift_simulate import home_pool, new_domain

        sites = 3
        return home_pool(0, sites, 0)[:pool], new_domain(sites, 0)[0][:pool]
    rng = random.Random(0)
    return ([home_prompt(rng) for _ in range(pool)], [new_prompt(rng) for _ in range(pool)])


def signal_pool(engine: NativeEngine, prompts: list[str], project: Projector,
                settings: DriftSettings, seed: int) -> list[Observation]:
    """The observations the daemon would make of these prompts."""
    pool: list[Observation] = []
    batch = max(1, engine.info.n_parallel)
    for start in range(0, len(prompts), batch):
        reqs = []
        for i, text in enumerate(prompts[start:start + batch]):
            tokens = engine.tokenize(text, True, False)
            reqs.append(engine.submit(RequestParams(
                prompt=tokens, max_tokens=16, drift_signals=True,
                sampling=Sampling(temperature=0.8, seed=seed + start + i))))
        pending = {r.id: r for r in reqs}
        while pending:
            select.select([engine.event_fd], [], [], 60.0)
            for rid in engine.drain_ready():
                r = pending.get(rid)
                out = r.take() if r is not None else None
                if r is None or out is None or not out.finished:
                    continue
                del pending[rid]
                d = out.drift
                event = RequestFinished(
                    request_id="", model="m", client="", kind="generate", status="ok",
                    finish_reason="stop" if out.finish_reason.name == "STOP" else "length",
                    prompt_tokens=out.n_prompt, completion_tokens=out.n_generated,
                    cached_tokens=0, queue_s=0.0, ttft_s=0.0, total_s=0.0,
                    drift=RequestSignals(d.prompt_nll, d.first_token_entropy, d.prompt_pool)
                    if d else None)
                obs = observation_of(event, settings.scalar_signals, settings.uses_vector,
                                     project)
                if obs is not None:
                    pool.append(obs)
                r.free()
    return pool


def stream_rng(seed: int) -> np.random.Generator:
    """The traffic's draws: a stream of its own, not the calibration's.  Seeded
    with the bare `seed`, as the monitor's calibration is, the two drew the
    same bits, and a stream's reference was correlated with its own
    calibration's resamples."""
    return np.random.default_rng((seed, 0x7AFF1C))


def cached_pools(cache: Path | None, key: dict[str, Any],
                 compute: Any) -> tuple[list[Observation], list[Observation]]:
    """The two signal pools, from `cache` when it holds them for `key` (the
    model's SHA-256, the domains, the pool size and the signal settings),
    else computed and stored there: on Gemma they take half an hour on two
    cores, and the statistics may be rerun many times on the same pools."""
    if cache is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"drift-pools-{digest}.npz"
    if path.exists():
        with np.load(path) as z:
            names = [str(n) for n in z["names"]]
            return tuple(
                [Observation(dict(zip(names, (float(x) for x in row), strict=True)), vec)
                 for row, vec in zip(z[f"{side}_scalars"], z[f"{side}_vectors"], strict=True)]
                for side in ("home", "new"))  # type: ignore[return-value]
    home, new = compute()
    names = sorted(home[0].scalars)
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {f"{side}_{part}": np.array([[o.scalars[n] for n in names] for o in pool])
              if part == "scalars" else np.stack([o.vector for o in pool])
              for side, pool in (("home", home), ("new", new))
              for part in ("scalars", "vectors")}
    np.savez(path, names=np.array(names), **arrays)  # type: ignore[arg-type]
    return home, new


def null_run(settings: DriftSettings, home: list[Observation], n: int, seed: int
             ) -> tuple[int, int]:
    """(alarm onsets, requests watched after the reference)."""
    rng = stream_rng(seed)
    monitor = DriftMonitor(replace(settings, seed=seed), "null")
    onsets, alarmed = 0, False
    for _ in range(n):
        status = monitor.observe(home[rng.integers(len(home))])
        if status is not None:
            onsets += int(status.alarm and not alarmed)
            alarmed = status.alarm
    return onsets, max(0, n - settings.reference_size)


def shift_run(settings: DriftSettings, home: list[Observation], new: list[Observation],
              shift: float, after: int, seed: int) -> int | None:
    """Requests from the shift to the alarm's onset; None if none within `after`."""
    rng = stream_rng(seed)
    monitor = DriftMonitor(replace(settings, seed=seed), "shift")
    for _ in range(settings.reference_size + settings.window):   # reference, then a full window
        monitor.observe(home[rng.integers(len(home))])
    for i in range(after):
        pool = new if rng.random() < shift else home
        status = monitor.observe(pool[rng.integers(len(pool))])
        if status is not None and status.alarm:
            return i + 1
    return None


def cost_round(engine: NativeEngine, prompts: list[str], ask: list[bool], max_tokens: int
               ) -> tuple[int, float]:
    """(tokens generated, seconds) for one round of concurrent requests."""
    tokens = [engine.tokenize(p, True, False) for p in prompts]
    t0 = time.perf_counter()
    reqs = [engine.submit(RequestParams(prompt=t, max_tokens=max_tokens, ignore_eos=True,
                                        drift_signals=a)) for t, a in zip(tokens, ask, strict=True)]
    pending = {r.id: r for r in reqs}
    generated = 0
    while pending:
        select.select([engine.event_fd], [], [], 60.0)
        for rid in engine.drain_ready():
            r = pending.get(rid)
            if r is None:
                continue
            out = r.take()
            generated += len(out.tokens)
            if out.finished:
                del pending[rid]
    seconds = time.perf_counter() - t0
    for r in reqs:
        r.free()
    return generated, seconds


def cost(args: argparse.Namespace, model: str) -> dict[str, Any]:
    n = args.concurrency
    engine = NativeEngine(EngineParams(model_path=model, n_parallel=n, n_ctx=512 * n,
                                       n_threads=args.threads, n_threads_batch=args.threads,
                                       drift_rows=DriftConfig().nll_rows))
    rng = random.Random(0)
    rounds: dict[str, list[tuple[int, float]]] = {"off": [], "on": []}
    try:
        cost_round(engine, [home_prompt(rng)], [False], 4)            # warm-up
        for rep in range(args.repeat):
            order = ["off", "on"] if rep % 2 == 0 else ["on", "off"]
            for mode in order:
                prompts = [f"Request {rep}.{i} {mode}: {home_prompt(rng)}" for i in range(n)]
                ask = [mode == "on" and rng.random() < args.fraction for _ in range(n)]
                rounds[mode].append(cost_round(engine, prompts, ask, 64))
                g, secs = rounds[mode][-1]
                print(f"round {rep} {mode}: {g / secs:.1f} tokens/s "
                      f"({sum(ask)} sampled)", file=sys.stderr, flush=True)
    finally:
        engine.close()

    def rate(rs: list[tuple[int, float]]) -> tuple[float, float]:
        return (sum(g for g, _ in rs) / sum(s for _, s in rs),
                statistics.median(g / s for g, s in rs))
    off_total, off_median = rate(rounds["off"])
    on_total, on_median = rate(rounds["on"])
    return {"model": model, "concurrency": n, "fraction": args.fraction, "threads": args.threads,
            "load_average_after": os.getloadavg(),   # a shared machine's noise, for the reader
            "repeat": args.repeat, "tokens_per_s": {
                "off_total": off_total, "on_total": on_total,
                "off_median": off_median, "on_median": on_median},
            "ratio_total": on_total / off_total, "ratio_median": on_median / off_median,
            "command": "python -m benchmarks.drift " + " ".join(sys.argv[1:])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="GGUF (default: the generated tiny model)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=2000, help="requests per null run")
    ap.add_argument("--shift", type=float, default=0.2)
    ap.add_argument("--after", type=int, default=3000, help="longest wait for an alarm")
    ap.add_argument("--pool", type=int, default=400, help="prompts per domain (at most 400 "
                                                          "with --domains clinical)")
    ap.add_argument("--domains", choices=("clinical", "generic"), default="clinical")
    ap.add_argument("--reference-size", type=int)
    ap.add_argument("--window", type=int)
    ap.add_argument("--ert", type=int)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 seeds, small sizes")
    ap.add_argument("--pool-cache", type=Path, help="keep the engine's signal pools here, "
                    "keyed by model digest and settings, and reuse them")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--cost", action="store_true", help="measure throughput on/off instead")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=DriftConfig().sample_fraction)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args(argv)
    if args.cost:
        model = args.model or str(Path(__file__).resolve().parent.parent / "models"
                                  / "gemma-3-270m-q4_k_m.gguf")
        engine_cost = cost(args, model)
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        text = json.dumps(engine_cost, indent=2)
        (args.out / f"drift-cost-{stamp}.json").write_text(text)
        (args.out / "drift-cost-latest.json").write_text(text)
        print(text)
        return 0
    if args.quick:
        args.seeds, args.requests, args.pool, args.after = 2, 600, 120, 600
        args.reference_size = args.reference_size or 200
        args.window = args.window or 50
    cfg = DriftConfig(enabled=True, sample_fraction=1.0)
    cfg = replace(cfg, **{k: v for k, v in (("reference_size", args.reference_size),
                                            ("window", args.window),
                                            ("ert_requests", args.ert)) if v})
    settings = settings_of(cfg)
    every = replace(settings, signals=tuple(BY_NAME))   # the pools hold every signal
    project = Projector(cfg.embedding_dims)

    model = args.model
    if model is None:
        from runtime.models.tiny import write_tiny_model
        model = str(write_tiny_model(Path(tempfile.mkdtemp()) / "tiny.gguf"))
    t0 = time.monotonic()

    def compute() -> tuple[list[Observation], list[Observation]]:
        engine = NativeEngine(EngineParams(model_path=model, n_parallel=4, n_ctx=4096,
                                           drift_rows=cfg.nll_rows))
        try:
            home_texts, new_texts = domain_prompts(args.domains, args.pool)
            return (signal_pool(engine, home_texts, project, every, 1),
                    signal_pool(engine, new_texts, project, every, 100_000))
        finally:
            engine.close()
    from runtime.bundle.manifest import sha256_file
    home, new = cached_pools(args.pool_cache, {
        "model": sha256_file(Path(model)), "domains": args.domains, "pool": args.pool,
        "nll_rows": cfg.nll_rows, "embedding_dims": cfg.embedding_dims,
        "signals": list(every.signals)}, compute)
    pool_s = time.monotonic() - t0
    print(f"signal pools: {len(home)} home, {len(new)} new ({pool_s:.0f}s)", file=sys.stderr)

    onsets = watched = 0
    per_seed = []
    for seed in range(args.seeds):
        o, w = null_run(settings, home, args.requests, seed)
        onsets, watched = onsets + o, watched + w
        per_seed.append(o)
        print(f"null seed {seed}: {o} false alarm(s) in {w} watched requests", file=sys.stderr)
    delays: dict[str, list[int | None]] = {}
    for name in [*BY_NAME, "combined"]:          # every signal alone, then the watched ones
        s = settings if name == "combined" else replace(settings, signals=(name,))
        delays[name] = [shift_run(s, home, new, args.shift, args.after, seed)
                        for seed in range(args.seeds)]
        print(f"shift {name}: {delays[name]}", file=sys.stderr)

    def median_delay(xs: list[int | None]) -> float | None:
        # censored runs count as longer than every detected one
        ordered = sorted(x if x is not None else float("inf") for x in xs)
        m = statistics.median_low(ordered)
        return None if m == float("inf") else m

    result: dict[str, Any] = {
        "model": model, "settings": {k: getattr(cfg, k) for k in (
            "reference_size", "window", "stride", "ert_requests", "embedding_dims")},
        "signals": list(settings.signals), "signals_alone": list(BY_NAME),
        "pool": {"home": len(home), "new": len(new)},
        "domains": args.domains,
        "null": {"seeds": args.seeds, "requests_per_run": args.requests,
                 "false_alarms": onsets, "watched_requests": watched,
                 "per_10k_watched": 1e4 * onsets / max(1, watched),
                 "target_per_10k": 1e4 / cfg.ert_requests, "per_seed": per_seed},
        "shift": {"fraction": args.shift, "censored_at": args.after,
                  "delay": delays,
                  "median_delay": {k: median_delay(v) for k, v in delays.items()},
                  "detected": {k: sum(x is not None for x in v) for k, v in delays.items()}},
        "quick": args.quick,
        "command": "python -m benchmarks.drift " + " ".join(argv or sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(result, indent=2)
    (args.out / f"drift-{stamp}.json").write_text(text)
    (args.out / "drift-latest.json").write_text(text)
    (args.out / "drift-latest.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    n = r["null"]
    lines = [
        "# Drift watch: false alarms and detection delay" + (" (smoke run)" if r["quick"] else ""),
        "", f"`{r['command']}` on `{Path(r['model']).name}`, {r.get('domains', 'generic')} "
        f"domains (in process: the engine's real signals, the daemon's monitor and "
        f"statistics); settings {r['settings']}.", "",
        f"**False alarms:** {n['false_alarms']} in {n['watched_requests']} watched requests "
        f"over {n['seeds']} null runs of {n['requests_per_run']} requests: "
        f"{n['per_10k_watched']:.2f} per 10,000 (calibrated target "
        f"{n['target_per_10k']:.2f}).", "",
        f"**Detection delay** after {100 * r['shift']['fraction']:.0f}% of the traffic moves "
        f"to the new domain (requests from the shift to the alarm; censored at "
        f"{r['shift']['censored_at']}):", "",
        "| signals | median delay | detected |", "|---|---|---|"]
    for name, med in r["shift"]["median_delay"].items():
        lines.append(f"| {name} | {med if med is not None else '> censor'} | "
                     f"{r['shift']['detected'][name]}/{n['seeds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
