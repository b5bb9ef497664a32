"""Storage benchmark: what encryption at rest costs, side by side in one run.

    python -m benchmarks.storage [--model PATH] [--repeat 7]

1. AEAD speed per chunk size (the sealed format's 1 MiB choice).
2. `hearth models import` speed, GB/s, fsync included (and the crypto alone).
3. Model load: plaintext (open, GGUF check, engine) against sealed (decrypt and
   verify into a memfd, engine), alternating, medians.  Goal: <= 1.10x.
4. Serving throughput with the audit log on against off: two daemons on the same
   sealed model, the same N=8 load alternating between them.  Goal: >= 0.98x.

Writes benchmarks/results/storage-<stamp>.json and storage-latest.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from benchmarks import load
from benchmarks.procs import ManagedProcess
from benchmarks.report import save_results
from benchmarks.serving import DEFAULT_MODEL, describe_machine, resolve_model, token_counter

GOAL_LOAD = 1.10
GOAL_AUDIT = 0.98


def aead_sweep() -> list[dict[str, Any]]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    rows = []
    for name, cls in (("AES-256-GCM", AESGCM), ("ChaCha20-Poly1305", ChaCha20Poly1305)):
        aead = cls(os.urandom(32))
        for size in (16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20):
            data, nonce = os.urandom(size), os.urandom(12)
            sealed = aead.encrypt(nonce, data, b"")
            out = bytearray(size)
            n = max(4, (128 << 20) // size)
            t = time.perf_counter()
            for _ in range(n):
                aead.decrypt_into(nonce, sealed, b"", out)
            dec = n * size / (time.perf_counter() - t) / 1e9
            t = time.perf_counter()
            for _ in range(n):
                aead.encrypt(nonce, data, b"")
            enc = n * size / (time.perf_counter() - t) / 1e9
            rows.append({"suite": name, "chunk_bytes": size, "decrypt_gb_s": round(dec, 2),
                         "encrypt_gb_s": round(enc, 2)})
    return rows


def import_speed(model: Path, work: Path, repeat: int) -> dict[str, Any]:
    from runtime.storage.keys import KeySource
    from runtime.storage.sealed import Context, SealedWriter
    from runtime.storage.store import SealedStore

    key = KeySource("key-file", "bench", os.urandom(32))
    size = model.stat().st_size
    full, crypto = [], []
    for i in range(repeat):
        state = work / f"import-{i}"
        store = SealedStore.init(state, key)
        t = time.perf_counter()
        store.import_file(model, "bench")
        full.append(size / (time.perf_counter() - t) / 1e9)
        store.close()
        shutil.rmtree(state)
        with model.open("rb") as src:
            t = time.perf_counter()
            writer = SealedWriter(cast(BinaryIO, _Null()), os.urandom(32),
                                  Context("model", "bench", 1))
            for block in iter(lambda: src.read(1 << 20), b""):
                writer.write(block)
            writer.close()
            crypto.append(size / (time.perf_counter() - t) / 1e9)
    return {"bytes": size, "import_gb_s": round(statistics.median(full), 3),
            "import_runs_gb_s": [round(x, 3) for x in full],
            "seal_only_gb_s": round(statistics.median(crypto), 3)}


class _Null(io.RawIOBase):
    def write(self, b: Any) -> int:
        return len(b)


def load_times(model: Path, work: Path, repeat: int, threads: int) -> dict[str, Any]:
    from runtime.models.gguf_file import inspect_gguf_fd
    from runtime.native import EngineParams, NativeEngine
    from runtime.storage.keys import KeySource
    from runtime.storage.store import SealedStore

    store = SealedStore.init(work / "load", KeySource("key-file", "bench", os.urandom(32)))
    store.import_file(model, "bench")
    params: dict[str, Any] = {"n_ctx": 8192, "n_parallel": 8, "n_threads": threads,
                              "n_threads_batch": threads}
    plain, sealed, decrypt = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        fd = os.open(model, os.O_RDONLY)
        inspect_gguf_fd(fd, model.name)
        engine = NativeEngine(EngineParams(model_fd=fd, **params))
        os.close(fd)
        plain.append(time.perf_counter() - t)
        engine.close()
        t = time.perf_counter()
        fd, _ = store.open_memfd("model", "bench")
        decrypt.append(time.perf_counter() - t)
        engine = NativeEngine(EngineParams(model_fd=fd, **params))
        os.close(fd)
        sealed.append(time.perf_counter() - t)
        engine.close()
    store.close()
    p, s = statistics.median(plain), statistics.median(sealed)
    return {"plaintext_s": round(p, 3), "sealed_s": round(s, 3), "ratio": round(s / p, 3),
            "ratio_of_fastest": round(min(sealed) / min(plain), 3),
            "decrypt_verify_s": round(statistics.median(decrypt), 3),
            "plaintext_runs_s": [round(x, 3) for x in plain],
            "sealed_runs_s": [round(x, 3) for x in sealed]}


def audit_cost(model: Path, work: Path, repeat: int, threads: int) -> dict[str, Any]:
    """Two daemons on one sealed model, with and without the audit log."""
    from runtime.cli.main import main as hearth

    state, key = work / "audit-state", work / "master.key"
    if hearth(["keys", "init", "--state-dir", str(state), "--key-file", str(key)]) != 0 or \
            hearth(["models", "import", str(model), "--name", "bench", "--state-dir",
                    str(state), "--key-file", str(key)]) != 0:
        raise SystemExit("could not prepare the sealed store")
    count = token_counter(model)
    servers, addrs = {}, {}
    try:
        for label, extra in (("off", ["--no-audit"]), ("on", ["--audit-content"])):
            ready = work / f"ready-{label}.json"
            cmd = [sys.executable, "-m", "runtime.cli.main", "serve", "--model", "bench",
                   "--state-dir", str(state), "--key-file", str(key), "--listen",
                   "127.0.0.1:0", "--parallel", "8", "--ctx", "4096", "--threads",
                   str(threads), "--ready-file", str(ready), *extra]
            servers[label] = ManagedProcess(f"hearth-audit-{label}", cmd, work)
            servers[label].wait_until(ready.exists, 300, "ready file")
            addrs[label] = json.loads(ready.read_text())["addresses"][0]
            load.drive_hearth(addrs[label], "bench", ["warm up"], 8)
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for rep in range(repeat):
            for label in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                prompts = load.make_prompts(8, count, rep=rep * 2 + (label == "on"))
                level = load.summarize(8, load.drive_hearth(addrs[label], "bench", prompts, 64),
                                       64)
                runs[label].append(level.agg_tok_s or 0.0)
    finally:
        for server in servers.values():
            server.stop()
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    return {"n": 8, "tok_s_audit_off": round(off, 2), "tok_s_audit_on": round(on, 2),
            "ratio": round(on / off, 3), "runs": runs}


def markdown(result: dict[str, Any]) -> str:
    lt, imp, au = result["load"], result["import"], result["audit"]
    verdict = lambda ok: "PASS" if ok else "MISS"  # noqa: E731
    lines = [f"# Storage benchmark, {result['timestamp']}", "",
             f"{result['model']} on {result['machine']['cpu']} "
             f"({result['machine']['usable_cores']} usable cores); medians of "
             f"{result['repeat']} alternating runs.", "",
             "| figure | value | goal |", "|---|---|---|",
             f"| model load, plaintext | {lt['plaintext_s']:.3f} s | |",
             f"| model load, sealed (decrypt + verify into a memfd, then load) | "
             f"{lt['sealed_s']:.3f} s | |",
             f"| sealed ÷ plaintext load | {lt['ratio']:.3f} | ≤ {GOAL_LOAD} "
             f"{verdict(lt['ratio'] <= GOAL_LOAD)} |",
             f"| fastest sealed ÷ fastest plaintext | {lt['ratio_of_fastest']:.3f} | |",
             f"| of which decrypt + verify | {lt['decrypt_verify_s']:.3f} s | |",
             f"| import (`hearth models import`, fsync included) | {imp['import_gb_s']:.3f} GB/s"
             f" | |",
             f"| sealing alone (hash + encrypt, no disk) | {imp['seal_only_gb_s']:.3f} GB/s | |",
             f"| serving N=8, audit log off | {au['tok_s_audit_off']:.1f} tok/s | |",
             f"| serving N=8, audit log and content on | {au['tok_s_audit_on']:.1f} tok/s | |",
             f"| audit on ÷ off | {au['ratio']:.3f} | ≥ {GOAL_AUDIT} "
             f"{verdict(au['ratio'] >= GOAL_AUDIT)} |", "",
             "AEAD decryption speed by chunk size (one core):", "",
             "| suite | 16 KiB | 64 KiB | 256 KiB | 1 MiB | 4 MiB |", "|---|---|---|---|---|---|"]
    for suite in ("AES-256-GCM", "ChaCha20-Poly1305"):
        cells = [f"{r['decrypt_gb_s']:.2f}" for r in result["aead"] if r["suite"] == suite]
        lines.append(f"| {suite} | " + " | ".join(f"{c} GB/s" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    model = resolve_model(args.model)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="hearth-storage-bench-") as tmp:
        work = Path(tmp)
        print("AEAD sweep ...", file=sys.stderr)
        aead = aead_sweep()
        print("import ...", file=sys.stderr)
        imp = import_speed(model, work, min(args.repeat, 3))
        print("load times ...", file=sys.stderr)
        loads = load_times(model, work, args.repeat, args.threads)
        print("audit cost ...", file=sys.stderr)
        audit = audit_cost(model, work, max(3, args.repeat // 2), args.threads)
    result = {"schema": "hearth-storage-benchmark/1",
              "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "model": model.name, "repeat": args.repeat,
              "aead": aead, "import": imp, "load": loads, "audit": audit}
    save_results(args.out, "storage", stamp, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
