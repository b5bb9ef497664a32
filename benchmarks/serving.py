"""Serving benchmark: Hearth against llama.cpp peers, side by side in one run.

    python -m benchmarks.serving [--quick] [--peers hearth,llama-server-tuned] ...

Every peer is started once; then, for each N and each repetition (fresh prompts each
time), every peer runs once, in an order that rotates from round to round, so a noisy
minute on the shared machine does not land on one peer.  Each figure is the median
repetition.  See benchmarks/README.md for what is measured and how.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchmarks import load, report
from benchmarks.lineup import PEERS, HearthSettings, Setup
from benchmarks.peers import (
    REPO,
    Peer,
    PeerResult,
    finish_memory,
    make_peer,
    peers_build_dir,
    peers_cmake_args,
    probe_hearth,
)
from benchmarks.procs import PeerSkipped, PeerUnavailable

DEFAULT_MODEL = "models/gemma-3-270m-q4_k_m.gguf"


def _int_list(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma list of positive integers")
    return values


def _peer_list(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    return keys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="GGUF to serve (default: %(default)s, "
                   "prepared if missing)")
    p.add_argument("--concurrency", type=_int_list, default=[1, 4, 8, 16, 32],
                   help="N values, comma list (default: 1,4,8,16,32)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (64)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads of every peer (default: usable cores, %(default)s)")
    p.add_argument("--peers", type=_peer_list, default=list(PEERS),
                   help=f"comma list, a subset of {','.join(PEERS)} (default: all)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="results folder (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=32,
                   help="slots of every serving peer (default: %(default)s)")
    p.add_argument("--ctx", type=int, default=8192,
                   help="context of every peer, shared by its slots (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per N and peer, interleaved, each with fresh prompts; the "
                        "median by throughput is reported (default: %(default)s; fewer "
                        "than 3 is a smoke run, not a result)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: N in {1, 4} only, one run each")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.quick:
        args.concurrency = [n for n in args.concurrency if n in (1, 4)] or [1, 4]
        args.repeat = 1
    return args


def resolve_model(path: str) -> Path:
    model = Path(path)
    if model.exists():
        return model.resolve()
    if path != DEFAULT_MODEL:
        raise SystemExit(f"--model {path}: no such file")
    from runtime.models.default_model import prepare_default_model

    return Path(prepare_default_model("models")).resolve()


def token_counter(model: Path) -> Callable[[str], int]:
    """The model's own tokenizer (vocabulary only), or a words-based guess without it."""
    try:
        from llama_cpp import Llama

        vocab = Llama(model_path=str(model), vocab_only=True, verbose=False)
        return lambda text: len(vocab.tokenize(text.encode(), add_bos=True))
    except Exception as exc:
        print(f"cannot load the tokenizer ({exc}); estimating prompt lengths from words",
              file=sys.stderr)
        return lambda text: int(len(text.split()) * 1.3) + 1


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        return ""


def _accelerator() -> str | None:
    """The GPUs nvidia-smi lists, if any (every peer here runs on the CPU unless told)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return ", ".join(line.strip() for line in out.splitlines() if line.strip()) or None


def describe_machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "accelerator": _accelerator(),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--", ".",
                                   ":(exclude)benchmarks/results"))}


def describe(args: argparse.Namespace, model: Path, prompt_tokens: dict[int, list[list[int]]],
             settings: HearthSettings) -> dict[str, Any]:
    digest = hashlib.sha256()
    with model.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "schema": "hearth-serving-benchmark/2",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "git": {"commit": _git("rev-parse", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--", ".",
                                   ":(exclude)benchmarks/results"))},
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "peers_build": {"dir": str(peers_build_dir()), "cmake_args": peers_cmake_args()},
        "model": {"path": str(model), "name": model.name, "bytes": model.stat().st_size,
                  "sha256_prefix": digest.hexdigest()[:16]},
        "parameters": {"concurrency": args.concurrency, "max_tokens": args.max_tokens,
                       "threads": args.threads, "peers": args.peers, "quick": args.quick,
                       "repeat": args.repeat,
                       "n_ctx": args.ctx, "n_parallel": args.parallel,
                       "prompt_tokens": prompt_tokens,
                       "itl_counting": "a chunk of k tokens: its gap once, then k-1 zeros",
                       "order": "every peer once per (N, repetition), rotated each round",
                       "figure": "the repetition with the median aggregate tok/s"},
        "hearth_settings": dataclasses.asdict(settings),
        "tuned_peers_copy": {"flash_attn": settings.flash_attn,
                             "kv_unified": settings.kv_unified,
                             "llama_server": "--swa-checkpoints 0 --cache-ram 0",
                             "llama_cpp_python_server": "--interrupt_requests False"},
    }


def schedule(keys: list[str], ns: list[int], repeat: int,
             measured_at: Callable[[str, int], bool]) -> list[tuple[int, int, str]]:
    """(N, repetition, peer) in the order they run.  Each (N, repetition) is a round in
    which every peer measured at N runs once; the order rotates by one from round to
    round (A B C, B C A, C A B, …), so no peer always goes first or after the same peer."""
    plan: list[tuple[int, int, str]] = []
    rounds = 0
    for n in ns:
        here = [k for k in keys if measured_at(k, n)]
        for rep in range(repeat):
            if here:
                shift = rounds % len(here)
                plan += [(n, rep, k) for k in here[shift:] + here[:shift]]
                rounds += 1
    return plan


def _fail(result: PeerResult, exc: BaseException) -> None:
    result.status = "skipped" if isinstance(exc, PeerSkipped) else "failed"
    result.reason = (str(exc) if isinstance(exc, PeerUnavailable)
                     else f"{type(exc).__name__}: {exc}")
    print(f"   {result.label}: {result.status}: {result.short_reason()}", file=sys.stderr,
          flush=True)


def start_peers(peers: dict[str, Peer], ns: list[int]) -> list[str]:
    """Starts every peer (servers stay up, idle, until the end); the keys that started."""
    live = []
    for key, peer in peers.items():
        spec = peer.spec
        print(f"== starting {spec.label}", file=sys.stderr, flush=True)
        try:
            if not any(spec.measured_at(n) for n in ns):
                raise PeerSkipped(f"measured at N in {set(spec.ns or ())} only, which this "
                                  "run leaves out")
            peer.start()
            live.append(key)
        except Exception as exc:
            _fail(peer.result, exc)
            peer.stop()
    return live


def measure(peers: dict[str, Peer], live: list[str], ns: list[int], repeat: int
            ) -> dict[str, dict[int, list[load.LevelResult]]]:
    """Runs the schedule; a peer that fails is stopped and left out of later rounds."""
    runs: dict[str, dict[int, list[load.LevelResult]]] = {k: {} for k in peers}
    plan = schedule(live, ns, repeat, lambda k, n: peers[k].spec.measured_at(n))
    for step, (n, rep, key) in enumerate(plan, 1):
        peer = peers[key]
        if peer.result.status != "ok":
            continue
        started = time.monotonic()
        try:
            level = peer.run(n, rep)
        except Exception as exc:
            _fail(peer.result, exc)
            peer.stop()
            continue
        seconds = time.monotonic() - started
        peer.result.info["seconds_measured"] = round(
            peer.result.info.get("seconds_measured", 0.0) + seconds, 1)
        runs[key].setdefault(n, []).append(level)
        tok_s = "—" if level.agg_tok_s is None else f"{level.agg_tok_s:.1f} tok/s"
        print(f"  [{step}/{len(plan)}] N={n} run {rep + 1}/{repeat} {key}: {tok_s}",
              file=sys.stderr, flush=True)
    return runs


def print_table(results: list[PeerResult], ns: list[int]) -> None:
    w = max(len(p.key) for p in results) if results else 4
    print(f"\n{'peer':<{w}} {'N':>3} {'tok/s':>8} {'TTFT50':>7} {'TTFT99':>7} {'ITL50':>7} "
          f"{'ITL99':>7} {'done':>6} {'RSS MB':>7}")
    for p in results:
        if p.status != "ok":
            print(f"{p.key:<{w}} {p.status}: {p.short_reason()}")
        for n in ns:
            lv = p.level(n)
            if lv is None:
                continue
            done = "" if lv.completed is None else f"{lv.completed}/{lv.streams}"
            cells = [_f(lv.agg_tok_s, 8, ".1f"), _f(lv.ttft_p50_s, 7, ".3f"),
                     _f(lv.ttft_p99_s, 7, ".3f"), _f(lv.itl_p50_s, 7, ".3f"),
                     _f(lv.itl_p99_s, 7, ".3f"), f"{done:>6}", _f(lv.peak_rss_mb, 7, ".0f")]
            print(f"{p.key:<{w}} {n:>3} " + " ".join(cells))


def _f(value: float | None, width: int, fmt: str) -> str:
    return f"{'—' if value is None else format(value, fmt):>{width}}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # a terminated benchmark still stops its servers (their `finally` blocks run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    model = resolve_model(args.model)
    count = token_counter(model)
    prompts = {n: [load.make_prompts(n, count, rep=r) for r in range(args.repeat)]
               for n in args.concurrency}
    lengths = {n: [[count(p) for p in rep] for rep in reps] for n, reps in prompts.items()}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as logs:
        setup = Setup(model=model, threads=args.threads, max_tokens=args.max_tokens,
                      ns=args.concurrency, prompts=prompts, log_dir=Path(logs),
                      n_ctx=args.ctx, n_parallel=args.parallel)
        print("== reading Hearth's settings (a start with llama.cpp's log on)",
              file=sys.stderr, flush=True)
        try:
            settings = probe_hearth(setup)
        except Exception as exc:
            settings = HearthSettings(source=f"Hearth's defaults: the probe start failed "
                                             f"({type(exc).__name__}: {exc})")
        print(f"   flash attention {settings.flash_attn}, unified KV {settings.kv_unified}, "
              f"KV buffers {settings.kv_buffer_mib} MiB ({settings.source})",
              file=sys.stderr, flush=True)
        peers = {k: make_peer(PEERS[k], setup, settings) for k in PEERS if k in args.peers}
        try:
            live = start_peers(peers, args.concurrency)
            runs = measure(peers, live, args.concurrency, args.repeat)
        finally:
            for peer in peers.values():
                peer.stop()
    results = []
    for key, peer in peers.items():
        peer.result.levels = [load.median_run(runs[key][n]) for n in args.concurrency
                              if runs.get(key, {}).get(n)]
        finish_memory(peer.result, model.stat().st_size)
        results.append(peer.result)
    meta = describe(args, model, lengths, settings)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_1m"] = {"start": load_start, "end": os.getloadavg()[0]}
    print_table(results, args.concurrency)
    goals = report.write_all(args.out, stamp, meta, results)
    print("\nGoals (judged on the tuned peers; the defaults' ratios for reference):")
    for goal in goals:
        print(f"  {goal.line()}")
    for line in report.memory_lines(results):
        print(f"  {line}")
    print(f"\nwrote {args.out}/serving-{stamp}.json, serving-latest.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
