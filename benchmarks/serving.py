"""Serving benchmark: Hearth against llama.cpp peers, side by side in one run.

    python -m benchmarks.serving [--quick] [--peers hearth,llama-server] ...

See benchmarks/README.md for what is measured and how.
"""
from __future__ import annotations

import argparse
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
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchmarks import load, report
from benchmarks.peers import (
    REPO,
    PeerResult,
    Setup,
    run_batched_bench,
    run_hearth,
    run_llama_cpp_inprocess,
    run_llama_cpp_server,
    run_llama_server,
)
from benchmarks.procs import PeerSkipped, PeerUnavailable

DEFAULT_MODEL = "models/gemma-3-270m-q4_k_m.gguf"

# key -> (label, runner), in the order they run
PEERS: dict[str, tuple[str, Callable[[Setup, PeerResult], None]]] = {
    "batched-bench": ("llama-batched-bench (decode only)", run_batched_bench),
    "llama-cpp-python": ("llama-cpp-python in-process", run_llama_cpp_inprocess),
    "llama-server": ("llama-server", run_llama_server),
    "llama-cpp-python-server": ("llama-cpp-python server",
                                partial(run_llama_cpp_server, interrupt=True)),
    "llama-cpp-python-server-no-interrupt": ("llama-cpp-python server, "
                                             "--interrupt_requests False",
                                             partial(run_llama_cpp_server, interrupt=False)),
    "hearth": ("Hearth", run_hearth),
}


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
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per N and server, each with fresh prompts; the median by "
                        "throughput is reported (default: %(default)s)")
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


def describe_machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--", ".",
                                   ":(exclude)benchmarks/results"))}


def describe(args: argparse.Namespace, model: Path, prompt_tokens: dict[int, list[int]]
             ) -> dict[str, Any]:
    digest = hashlib.sha256()
    with model.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "schema": "hearth-serving-benchmark/1",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "git": {"commit": _git("rev-parse", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--", ".",
                                   ":(exclude)benchmarks/results"))},
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "model": {"path": str(model), "name": model.name, "bytes": model.stat().st_size,
                  "sha256_prefix": digest.hexdigest()[:16]},
        "parameters": {"concurrency": args.concurrency, "max_tokens": args.max_tokens,
                       "threads": args.threads, "peers": args.peers, "quick": args.quick,
                       "repeat": args.repeat,
                       "n_ctx": 8192, "n_parallel": 32, "prompt_tokens": prompt_tokens,
                       "itl_counting": "a chunk of k tokens: its gap once, then k-1 zeros"},
    }


def run_peer(key: str, setup: Setup) -> PeerResult:
    label, runner = PEERS[key]
    result = PeerResult(key=key, label=label)
    print(f"== {label}", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        runner(setup, result)
    except PeerSkipped as exc:
        result.status, result.reason = "skipped", str(exc)
    except PeerUnavailable as exc:
        result.status, result.reason = "failed", str(exc)
    except Exception as exc:
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
    result.info["seconds"] = round(time.monotonic() - start, 1)
    if result.status != "ok":
        print(f"   {label}: {result.status}: {result.reason}", file=sys.stderr, flush=True)
    return result


def print_table(results: list[PeerResult], ns: list[int]) -> None:
    w = max(len(p.label) for p in results) if results else 4
    print(f"\n{'peer':<{w}} {'N':>3} {'tok/s':>8} {'TTFT50':>7} {'TTFT99':>7} {'ITL50':>7} "
          f"{'ITL99':>7} {'done':>6} {'RSS MB':>7}")
    for p in results:
        if p.status != "ok":
            print(f"{p.label:<{w}} {p.status}: {p.short_reason()}")
        for n in ns:
            lv = p.level(n)
            if lv is None:
                continue
            done = "" if lv.completed is None else f"{lv.completed}/{lv.streams}"
            cells = [_f(lv.agg_tok_s, 8, ".1f"), _f(lv.ttft_p50_s, 7, ".3f"),
                     _f(lv.ttft_p99_s, 7, ".3f"), _f(lv.itl_p50_s, 7, ".3f"),
                     _f(lv.itl_p99_s, 7, ".3f"), f"{done:>6}", _f(lv.peak_rss_mb, 7, ".0f")]
            print(f"{p.label:<{w}} {n:>3} " + " ".join(cells))


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
    lengths = {n: [count(p) for p in reps[0]] for n, reps in prompts.items()}
    meta = describe(args, model, lengths)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results = []
    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as logs:
        setup = Setup(model=model, threads=args.threads, max_tokens=args.max_tokens,
                      ns=args.concurrency, prompts=prompts, log_dir=Path(logs))
        for key in PEERS:
            if key in args.peers:
                results.append(run_peer(key, setup))
    print_table(results, args.concurrency)
    goals = report.write_all(args.out, stamp, meta, results)
    print("\nGoals (ratios from this run):")
    for goal in goals:
        print(f"  {goal.line()}")
    memory = report.hearth_memory_line(results)
    if memory:
        print(f"  {memory}")
    print(f"\nwrote {args.out}/serving-{stamp}.json, serving-latest.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
