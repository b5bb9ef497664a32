"""Where an engine step's time goes: llama_decode against everything around it.

    python -m benchmarks.engine_profile [--model M] [--n 16] [--max-tokens 64] [--threads T]

Runs the native engine in this process (no daemon, no gRPC) on N distinct prompts at once,
greedy with ignore_eos, after a warm-up burst, with the engine's step log on (the records
energy accounting reads: per step, each request's prompt and decoded tokens, on the
engine's own clock).  It reports the steps in which all N streams decode (the rate to set
beside llama-batched-bench's S_TG), and, over the burst,

    wall per step - llama_decode per step

which is what the engine spends outside llama.cpp per step: sampling over the vocabulary,
detokenizing, publishing, waking the reader.  Run it under `perf record -g` to see which.
This is how the greedy argmax over Gemma's 262,144-entry rows was found (7 ms of an 86 ms
step at N=16 before native/src/rows.c; about 3 ms after, most of it reading the rows).
A diagnostic, not a comparison with peers: the serving benchmark does that.
"""
from __future__ import annotations

import argparse
import os
import select
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.load import make_prompts
from benchmarks.serving import DEFAULT_MODEL, resolve_model

if TYPE_CHECKING:
    from runtime.native import NativeEngine, StepRecord


@dataclass(frozen=True)
class Profile:
    steps: int                 # engine steps of the burst
    all_decode_steps: int      # of them, steps in which every stream decoded
    all_decode_tokens: int
    all_decode_s: float        # from the first such step's start to the last one's end
    wall_s: float              # from the burst's first step's start to its last one's end
    decode_s: float            # inside llama_decode over the burst

    def line(self) -> str:
        rate = self.all_decode_tokens / self.all_decode_s if self.all_decode_s > 0 else 0.0
        outside = self.wall_s - self.decode_s
        return (f"{self.steps} steps in {self.wall_s:.2f} s; {self.all_decode_steps} with every "
                f"stream decoding: {self.all_decode_tokens} tokens, {rate:.1f} tok/s\n"
                f"per step: wall {self.wall_s / self.steps * 1e3:.1f} ms, in llama_decode "
                f"{self.decode_s / self.steps * 1e3:.1f} ms, outside it "
                f"{outside / self.steps * 1e3:.1f} ms ({outside / self.wall_s:.1%})")


def profile(records: list[StepRecord], n: int, decode_s: float) -> Profile:
    """The burst's steps from its step-log records (a step: the records sharing a start)."""
    by_step: dict[int, list[StepRecord]] = {}
    for rec in records:
        if not rec.finished:
            by_step.setdefault(rec.t_start_ns, []).append(rec)
    if not by_step:
        raise ValueError("the step log holds no step")
    ends = {t: max(r.t_end_ns for r in recs) for t, recs in by_step.items()}
    full = sorted(t for t, recs in by_step.items()
                  if len(recs) == n and all(r.n_decode > 0 and r.n_prefill == 0 for r in recs))
    return Profile(
        steps=len(by_step), all_decode_steps=len(full),
        all_decode_tokens=sum(r.n_decode for t in full for r in by_step[t]),
        all_decode_s=(ends[full[-1]] - full[0]) / 1e9 if full else 0.0,
        wall_s=(max(ends.values()) - min(by_step)) / 1e9, decode_s=decode_s)


def run_burst(engine: NativeEngine, prompts: list[list[int]], max_tokens: int) -> Profile:
    from runtime.native import RequestParams, Sampling

    before = engine.stats()
    engine.drain_steps()
    reqs = [engine.submit(RequestParams(prompt=p, max_tokens=max_tokens, ignore_eos=True,
                                        sampling=Sampling(temperature=0.0)))
            for p in prompts]
    done: set[int] = set()
    while len(done) < len(reqs):
        select.select([engine.event_fd], [], [], 1.0)
        engine.drain_ready()
        for r in reqs:
            if r.id not in done and r.take().finished:
                done.add(r.id)
    for r in reqs:
        r.free()
    after = engine.stats()
    records, lost = engine.drain_steps()
    if lost:
        raise RuntimeError(f"the step log lost {lost} records")
    return profile(records, len(prompts), (after.decode_ns_total - before.decode_ns_total) / 1e9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=16, help="concurrent streams (16)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args(argv)
    if args.n < 1 or args.max_tokens < 3:
        p.error("--n must be >= 1 and --max-tokens >= 3")
    from runtime.native import EngineParams, NativeEngine

    engine = NativeEngine(EngineParams(
        model_path=str(resolve_model(args.model)), n_ctx=max(4096, args.n * 512),
        n_parallel=args.n, n_threads=args.threads, n_threads_batch=args.threads))
    engine.enable_step_log(args.n * (args.max_tokens + 2) * 2)
    try:
        def tokens(rep: int) -> list[list[int]]:
            texts = make_prompts(args.n, lambda s: len(engine.tokenize(s)), rep=rep)
            return [engine.tokenize(t) for t in texts]

        run_burst(engine, tokens(1), args.max_tokens)          # warm-up
        result = run_burst(engine, tokens(0), args.max_tokens)
    finally:
        engine.close()
    print(f"N={args.n}, {args.threads} threads, {args.max_tokens} tokens per stream: "
          + result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
