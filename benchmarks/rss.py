"""Hearth's RSS beyond the model file and its KV cache, without the whole serving benchmark.

    python -m benchmarks.rss [--n 16] [--bursts 2] [--mappings 15]

Starts the daemon exactly as `benchmarks.serving` does (its probe start for the KV
llama.cpp allocated, then `HearthPeer`: 32 slots, 8192 context, the usable cores), reads
its RSS idle once ready, warms it up, sends `--bursts` bursts of N concurrent streams and
prints what `finish_memory` computes for the serving benchmark: RSS beyond model file + KV,
idle and at the sampled peak.  It also prints the kernel's own high-water mark (VmHWM,
which a 50 ms sampler can miss) on the same baseline, and with `--mappings` the largest
mappings by RSS (from /proc/PID/smaps) so a change can be traced to a library, the heap
or an anonymous buffer.  One run takes about a minute on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks import load
from benchmarks.lineup import PEERS, Setup
from benchmarks.peers import HearthPeer, finish_memory, probe_hearth
from benchmarks.serving import DEFAULT_MODEL, resolve_model, token_counter


def proc_status_kib(pid: int, field: str) -> int:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile ...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def largest_mappings(pid: int, top: int) -> list[tuple[int, str]]:
    """(RSS KiB, what) per mapped file or kind of anonymous memory, largest first;
    anonymous mappings are grouped as [heap], [stack] or [anon]."""
    sizes: dict[str, int] = defaultdict(int)
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
            name = head[5].strip() if len(head) == 6 else "[anon]"
            name = "[stack]" if name.startswith("[stack") else name
        elif line.startswith("Rss:"):
            sizes[name] += int(line.split()[1])
    return sorted(((kib, n) for n, kib in sizes.items()), reverse=True)[:top]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rss", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=16, help="streams per burst (%(default)s)")
    p.add_argument("--bursts", type=int, default=2, help="bursts of N (%(default)s)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--parallel", type=int, default=32)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--mappings", type=int, default=0,
                   help="also list the largest mappings by RSS, idle and after the bursts")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = resolve_model(args.model)
    count = token_counter(model)
    prompts = {args.n: [load.make_prompts(args.n, count, rep=r) for r in range(args.bursts)]}
    with tempfile.TemporaryDirectory(prefix="hearth-rss-") as logs:
        setup = Setup(model=model, threads=args.threads, max_tokens=args.max_tokens,
                      ns=[args.n], prompts=prompts, log_dir=Path(logs), n_ctx=args.ctx,
                      n_parallel=args.parallel)
        settings = probe_hearth(setup)
        peer = HearthPeer(PEERS["hearth"], setup, settings)
        try:
            peer.start()
            assert peer.server is not None
            pid = peer.server.pid
            idle_maps = largest_mappings(pid, args.mappings) if args.mappings else []
            peer.result.levels = [peer.run(args.n, rep) for rep in range(args.bursts)]
            hwm_mb = proc_status_kib(pid, "VmHWM") / 1024
            anon_mb = proc_status_kib(pid, "RssAnon") / 1024
            busy_maps = largest_mappings(pid, args.mappings) if args.mappings else []
        finally:
            peer.stop()
    finish_memory(peer.result, model.stat().st_size)
    info = peer.result.info
    base = info["model_file_mb"] + info["kv_allocated_mb"]
    figures = {"n": args.n, "bursts": args.bursts, "model_file_mb": info["model_file_mb"],
               "kv_allocated_mb": info["kv_allocated_mb"], "idle_rss_mb": info["idle_rss_mb"],
               "peak_rss_mb": info["peak_rss_mb"], "vm_hwm_mb": hwm_mb,
               "rss_anon_after_mb": anon_mb,
               "beyond_idle_mb": info["rss_beyond_model_kv_idle_mb"],
               "beyond_peak_mb": info["rss_beyond_model_kv_peak_mb"],
               "beyond_hwm_mb": hwm_mb - base}
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>20}: {value:8.1f}" if isinstance(value, float)
                  else f"{key:>20}: {value}")
    for title, maps in (("idle", idle_maps), ("after the bursts", busy_maps)):
        if maps:
            print(f"\nlargest mappings by RSS, {title}:")
            for kib, what in maps:
                print(f"  {kib / 1024:8.1f} MB  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
