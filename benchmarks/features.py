"""Serving features measured against Hearth itself, one run, as ratios.

    python -m benchmarks.features [--model PATH] [--repeat 3]

* **Speculative decoding.**  One stream, greedy, 128 new tokens, with and
  without a draft model, in the same process.  Reports tokens/s, the ratio,
  the acceptance rate, and checks that the text is identical.  Pairs:
  - a synthetic family (random weights, written with `gguf`): an 8-layer
    target and its 1-layer sibling, which shares the embeddings, the output
    head and the first layer (the shape of a distilled student);
  - Gemma 3 270M with itself as draft: the acceptance ceiling, so the
    ratio shows what verification costs on this machine;
  - Gemma 3 270M with an early-exit draft (its first 6 of 18 layers and its
    head): self-speculation without fine-tuning.
  No smaller Gemma 3 than 270M exists, so no natural sibling pair can be
  measured offline.
* **KV-cache quantization.**  N=8 concurrent greedy streams of 64 tokens with
  K and V in f16, q8_0 and q4_0: KV memory, aggregate tokens/s, and how many
  streams' greedy text equals the f16 run's, and how far they agree.

Results go to benchmarks/results/features-latest.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.draft_models import early_exit_draft
from benchmarks.report import save_results
from benchmarks.serving import DEFAULT_MODEL, describe_machine, resolve_model
from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling
from tests.native.helpers import collect

GREEDY = Sampling(temperature=0.0)
SPEC_PROMPT = ("The patient, a 64-year-old man, was admitted with chest pain radiating to the "
               "left arm. The attending physician ordered")
KV_PROMPTS = [f"Note {i}: the patient in bed {i} reports" + " mild pain" * (i % 4)
              for i in range(8)]


def _engine(model: Path, threads: int, **kw: Any) -> NativeEngine:
    return NativeEngine(EngineParams(model_path=str(model), n_ctx=kw.pop("n_ctx", 4096),
                                     n_threads=threads, n_threads_batch=threads, **kw))


def _run(engine: NativeEngine, prompts: list[str], max_tokens: int) -> tuple[float, list]:
    reqs = [engine.submit(RequestParams(prompt=engine.tokenize(p), max_tokens=max_tokens,
                                        sampling=GREEDY, ignore_eos=True)) for p in prompts]
    t0 = time.perf_counter()
    try:
        res = collect(engine, reqs, timeout=600)
    finally:
        for r in reqs:
            r.free()
    return time.perf_counter() - t0, [res[r.id] for r in reqs]


def speculative_pair(label: str, model: Path, draft: Path, threads: int, repeat: int,
                     n_draft: int = 4, max_tokens: int = 128) -> dict[str, Any]:
    rows: dict[str, Any] = {"pair": label}
    texts = {}
    for mode, d in (("plain", None), ("draft", draft)):
        # repack_weights=False in both runs, as a model with a draft gets by
        # default (draft_exact): the text must then be bit-identical.
        e = _engine(model, threads, n_parallel=1, draft_path=str(d) if d else None,
                    n_draft=n_draft, repack_weights=False)
        try:
            _run(e, [SPEC_PROMPT], 16)  # warm: page in weights, build graphs
            runs = [_run(e, [SPEC_PROMPT], max_tokens) for _ in range(repeat)]
        finally:
            e.close()
        rows[f"{mode}_tok_s"] = statistics.median(max_tokens / dt for dt, _ in runs)
        out = runs[-1][1][0][2]
        texts[mode] = runs[-1][1][0][1]
        if mode == "draft":
            rows["drafted"] = out.n_drafted
            rows["accepted"] = out.n_draft_accepted
            rows["acceptance"] = out.n_draft_accepted / max(1, out.n_drafted)
    rows["speedup"] = rows["draft_tok_s"] / rows["plain_tok_s"]
    rows["identical_text"] = texts["plain"] == texts["draft"]
    return rows


def kv_quantization(model: Path, threads: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    reference: list[list[int]] | None = None
    for kind in ("f16", "q8_0", "q4_0"):
        e = _engine(model, threads, n_parallel=8, n_ctx=8 * 512, cache_type_k=kind,
                    cache_type_v=kind, flash_attn=1)
        try:
            _run(e, KV_PROMPTS[:2], 8)
            runs = [_run(e, KV_PROMPTS, 64) for _ in range(repeat)]
            kv_bytes = e.info.kv_bytes
        finally:
            e.close()
        tokens = [r[0] for r in runs[-1][1]]
        if reference is None:
            reference = tokens
        prefixes = [_common_prefix(ref, got) for ref, got in zip(reference, tokens, strict=True)]
        rows.append({"cache_type": kind, "kv_bytes": kv_bytes,
                     "tok_s": statistics.median(8 * 64 / dt for dt, _ in runs),
                     "streams_equal_to_f16": sum(p == 64 for p in prefixes),
                     "mean_prefix_equal_to_f16": statistics.mean(prefixes)})
    base = rows[0]
    for r in rows:
        r["kv_ratio"] = r["kv_bytes"] / base["kv_bytes"]
        r["tok_s_ratio"] = r["tok_s"] / base["tok_s"]
    return rows


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Hearth serving features ({result['timestamp']})", "",
             f"{m.get('cpu', '?')}, {result['threads']} threads, CPU only; median of "
             f"{result['repeat']} runs after a warm-up.", "",
             "## Speculative decoding (one stream, greedy, 128 tokens, 4 proposals per step)",
             "", "| pair | no draft | with draft | speedup | acceptance | same text |",
             "|---|---|---|---|---|---|"]
    for r in result["speculative"]:
        lines.append(f"| {r['pair']} | {r['plain_tok_s']:.1f} tok/s | {r['draft_tok_s']:.1f} "
                     f"tok/s | {r['speedup']:.2f}x | {r['acceptance']:.0%} "
                     f"({r['accepted']}/{r['drafted']}) | "
                     f"{'yes' if r['identical_text'] else 'NO'} |")
    lines += ["", "## KV-cache quantization (Gemma 3 270M, N=8 streams x 64 tokens, "
              "flash attention on)", "",
              "| K and V | KV memory | vs f16 | tok/s | vs f16 | streams equal to f16 | "
              "tokens before the first difference (mean of 64) |",
              "|---|---|---|---|---|---|---|"]
    for r in result["kv"]:
        lines.append(f"| {r['cache_type']} | {r['kv_bytes'] / 2**20:.1f} MiB | "
                     f"{r['kv_ratio']:.2f} | {r['tok_s']:.1f} | {r['tok_s_ratio']:.2f} | "
                     f"{r['streams_equal_to_f16']}/8 | {r['mean_prefix_equal_to_f16']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    model = resolve_model(args.model)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="hearth-features-") as tmp:
        work = Path(tmp)
        spec = []
        for label, target, draft in (
                ("Gemma 3 270M, itself as draft (acceptance ceiling)", model, model),
                ("Gemma 3 270M, early-exit draft (first 14 of 18 layers)", model,
                 early_exit_draft(model, work / "gemma-first14.gguf", 14)),
                ("Gemma 3 270M, early-exit draft (first 9 of 18 layers)", model,
                 early_exit_draft(model, work / "gemma-first9.gguf", 9))):
            print(f"speculative: {label} ...", file=sys.stderr)
            spec.append(speculative_pair(label, target, draft, args.threads, args.repeat))
        print("KV-cache quantization ...", file=sys.stderr)
        kv = kv_quantization(model, args.threads, args.repeat)
    result = {"schema": "hearth-features-benchmark/1",
              "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "model": model.name, "threads": args.threads,
              "repeat": args.repeat, "speculative": spec, "kv": kv}
    save_results(args.out, "features", stamp, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
