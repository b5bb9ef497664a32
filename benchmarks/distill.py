"""The early-exit draft before and after `hearth distill`, on held-out prompts.

    python -m benchmarks.distill [--model PATH] [--draft-layers 12] [--steps 400]
                                 [--train-minutes 25] [--threads 2]

1. Texts: the synthetic clinical corpus (runtime/federation/corpus.py), one
   site's training notes to distil on and its held-out notes (distinct notes,
   never trained on) to measure on.
2. Before: the plain early-exit draft (the model's first K blocks and head).
3. Distil: `runtime.distill.job.distill` (what `hearth distill` runs), the
   training cut short after --train-minutes if the steps take longer.
4. After: the distilled draft.
Each draft is measured as the engine uses it: one stream at a time, greedy,
--tokens new tokens after each held-out prompt (the note's first half), with
--n-draft proposals per step, against the same prompts without a draft
(run just before the plain draft and again just after the distilled one):
acceptance (accepted / drafted proposals), tokens/s with and without the
draft, and whether the text is identical (it must be).  Also the held-out
KL(model || draft) per position.

Results: benchmarks/results/distill-<stamp>.{json,md} and distill-latest.*.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.report import save_results
from benchmarks.serving import DEFAULT_MODEL, describe_machine, resolve_model
from runtime.distill.early_exit import early_exit_draft
from runtime.distill.job import DistillSettings, distill
from runtime.federation.corpus import generate_site_corpus
from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling
from tests.native.helpers import collect


def prompt_of(note: str) -> str:
    words = note.split()
    return " ".join(words[:max(4, len(words) // 2)])


def generate(model: Path, draft: Path | None, prompts: list[str], tokens: int, n_draft: int,
             threads: int) -> dict[str, Any]:
    """Greedy continuations, one stream at a time (speculation's case)."""
    e = NativeEngine(EngineParams(model_path=str(model), n_ctx=2048, n_parallel=1,
                                  n_threads=threads, n_threads_batch=threads,
                                  draft_path=str(draft) if draft else None, n_draft=n_draft,
                                  repack_weights=False))
    try:
        texts, drafted, accepted, generated, seconds = [], 0, 0, 0, 0.0
        for p in prompts:
            req = e.submit(RequestParams(prompt=e.tokenize(p), max_tokens=tokens,
                                         sampling=Sampling(temperature=0.0), ignore_eos=True))
            t0 = time.perf_counter()
            try:
                toks, text, out = collect(e, [req], timeout=900)[req.id]
            finally:
                req.free()
            seconds += time.perf_counter() - t0
            texts.append(text)
            generated += len(toks)
            drafted += out.n_drafted
            accepted += out.n_draft_accepted
        return {"texts": texts, "tok_s": generated / seconds, "drafted": drafted,
                "accepted": accepted, "acceptance": accepted / max(1, drafted)}
    finally:
        e.close()


def markdown(r: dict[str, Any]) -> str:
    d = r["distill"]
    lines = [f"# Distilled early-exit draft ({r['timestamp']})", "",
             f"{r['machine'].get('cpu', 'CPU')}, {r['threads']} threads, CPU only, on a "
             "machine shared with other jobs (tokens/s are indicative only; each draft's "
             "speed is against a run without a draft made beside it).  Model "
             f"{r['model']}; draft = its first {d['draft_layers']} of {d['model_layers']} "
             f"blocks and its head; LoRA rank {r['rank']} on every projection of those "
             f"blocks, merged and stored as {r['merged_type']}.", "",
             f"Distillation: {d['steps']} steps of at most {r['batch_tokens']} positions "
             f"({d['tokens']} positions, {r['train_notes']} training notes, "
             f"{d['train_seconds'] / 60:.1f} min), KL(model || draft) over the full "
             f"vocabulary; training-batch KL {d['train_kl_first']:.3f} -> "
             f"{d['train_kl_last']:.3f}.", "",
             f"Held-out: {r['heldout_notes']} notes not trained on; KL per position "
             f"{d['heldout_kl_before']:.3f} -> {d['heldout_kl_after']:.3f}.  Speculation: "
             f"one stream, greedy, {r['tokens']} tokens after each note's first half, "
             f"{r['n_draft']} proposals per step.", "",
             "| draft | acceptance | tok/s with draft | tok/s without | speedup | same text |",
             "|---|---|---|---|---|---|"]
    for label, key in (("early exit, before", "before"), ("early exit, distilled", "after")):
        x = r[key]
        lines.append(f"| {label} | {x['acceptance']:.1%} ({x['accepted']}/{x['drafted']}) | "
                     f"{x['tok_s']:.1f} | {x['plain_tok_s']:.1f} | "
                     f"{x['tok_s'] / x['plain_tok_s']:.2f}x | "
                     f"{'yes' if x['same_text'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--draft-layers", type=int, default=12)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--train-minutes", type=float, default=25.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--batch-tokens", type=int, default=128)
    p.add_argument("--merged-type", default="q8_0")
    p.add_argument("--train-notes", type=int, default=400)
    p.add_argument("--heldout-notes", type=int, default=8)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--n-draft", type=int, default=4)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--keep-draft", type=Path, help="also save the distilled draft here")
    args = p.parse_args(argv)
    model = resolve_model(args.model)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    train, heldout = generate_site_corpus(0, 1, args.train_notes, args.heldout_notes, seed=1)
    prompts = [prompt_of(n) for n in heldout]

    def say(text: str) -> None:
        print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="hearth-distill-") as tmp:
        plain_draft = early_exit_draft(model, Path(tmp) / "early-exit.gguf", args.draft_layers)
        distilled = Path(tmp) / "distilled.gguf"
        say("without a draft ...")
        plain = generate(model, None, prompts, args.tokens, args.n_draft, args.threads)
        say(f"plain early-exit draft ... ({plain['tok_s']:.1f} tok/s without)")
        before = generate(model, plain_draft, prompts, args.tokens, args.n_draft, args.threads)
        say(f"acceptance before: {before['acceptance']:.1%}")
        report = distill(str(model), train, heldout, DistillSettings(
            draft_layers=args.draft_layers, steps=args.steps, rank=args.rank,
            learning_rate=args.learning_rate, batch_tokens=args.batch_tokens,
            threads=args.threads, merged_type=args.merged_type,
            max_seconds=args.train_minutes * 60), distilled, say)
        after = generate(model, distilled, prompts, args.tokens, args.n_draft, args.threads)
        say(f"acceptance after: {after['acceptance']:.1%}; without a draft again ...")
        # The machine's load changes over half an hour of training: each
        # draft's speed is compared with a run without one made beside it.
        plain_after = generate(model, None, prompts, args.tokens, args.n_draft, args.threads)
        if args.keep_draft:
            args.keep_draft.write_bytes(distilled.read_bytes())
    before["plain_tok_s"] = plain["tok_s"]
    after["plain_tok_s"] = plain_after["tok_s"]
    for x in (before, after):
        x["same_text"] = x.pop("texts") == plain["texts"]
    assert plain_after.pop("texts") == plain["texts"]
    result = {"schema": "hearth-distill-benchmark/1",
              "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "model": model.name, "threads": args.threads,
              "rank": args.rank, "learning_rate": args.learning_rate,
              "batch_tokens": args.batch_tokens, "merged_type": args.merged_type,
              "tokens": args.tokens, "n_draft": args.n_draft,
              "train_notes": len(train), "heldout_notes": len(heldout), "prompts": prompts,
              "distill": asdict(report),
              "plain": {k: v for k, v in plain.items() if k != "texts"},
              "plain_after": plain_after,
              "before": before, "after": after}
    md = markdown(result)
    save_results(args.out, "distill", stamp, result, md)
    (args.out / f"distill-{stamp}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
