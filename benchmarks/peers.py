"""The peers: each one is started by the benchmark, measured at every N, and stopped.

Each `run_*` returns a PeerResult; one that cannot start raises PeerUnavailable and the
orchestrator records why and goes on with the rest.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.procs import (
    MB,
    ManagedProcess,
    PeerSkipped,
    PeerUnavailable,
    RssSampler,
    free_port,
    http_status,
)

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Setup:
    """What every peer shares in one run."""

    model: Path
    threads: int
    max_tokens: int
    ns: list[int]
    prompts: dict[int, list[list[str]]]  # N -> one list of N distinct prompts per repetition
    log_dir: Path
    n_ctx: int = 8192
    n_parallel: int = 32


@dataclass
class PeerResult:
    key: str
    label: str
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    command: list[str] = field(default_factory=list)
    levels: list[load.LevelResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def level(self, n: int) -> load.LevelResult | None:
        return next((lv for lv in self.levels if lv.n == n), None)

    def short_reason(self, width: int = 200) -> str:
        """The reason on one line (a log tail joined), for tables."""
        text = " | ".join(line.strip() for line in (self.reason or "").splitlines()
                          if line.strip())
        return text if len(text) <= width else text[:width - 1] + "…"


Driver = Callable[[list[str], int], list[load.StreamRecord]]  # (prompts, max_tokens)
WARM_UP_PROMPT = "Warm-up request: say hello."


def _measure(server: ManagedProcess, setup: Setup, ns: list[int], drive: Driver,
             result: PeerResult) -> None:
    """One short warm-up request, then every N, sampling the server tree's RSS all along."""
    with RssSampler(server.pid) as rss:
        result.info["idle_rss_mb"] = rss.sample() / MB
        warm_up = drive([WARM_UP_PROMPT], 8)
        if not warm_up[0].arrivals:
            raise PeerUnavailable(f"the warm-up request failed: {warm_up[0].error}")
        for n in ns:
            rss.reset()
            print(f"  {result.key}: N={n} ...", file=sys.stderr, flush=True)
            # Shared machines are noisy: measure every repetition (each with its own
            # prompts) and keep the one with the median throughput.
            runs = []
            for prompts in setup.prompts[n]:
                records = drive(prompts, setup.max_tokens)
                runs.append((load.summarize(n, records, setup.max_tokens), records))
            runs.sort(key=lambda run: run[0].agg_tok_s or 0.0)
            level, records = runs[len(runs) // 2]
            level.extra["runs_agg_tok_s"] = [lv.agg_tok_s for lv, _ in runs]
            level.extra["runs_ttft_p50_s"] = [lv.ttft_p50_s for lv, _ in runs]
            level.peak_rss_mb = rss.window_peak() / MB
            server_ttft = load.server_ttft_p50(records)
            if server_ttft is not None:
                level.extra["server_ttft_p50_s"] = server_ttft
            result.levels.append(level)
            if not server.alive():
                raise PeerUnavailable(f"{server.name} died at N={n}:\n{server.log_tail()}")
        result.info["peak_rss_mb"] = rss.overall_peak / MB


# -- llama.cpp's own tools ------------------------------------------------------------------

def peers_build_dir() -> Path:
    default = Path.home() / ".cache" / "hearth" / "peers-build"
    return Path(os.environ.get("HEARTH_PEERS_BUILD") or default)


def ensure_llama_tools() -> Path:
    """The bin dir holding llama-batched-bench and llama-server, built once from the pinned
    llama-cpp-python sdist's vendor/llama.cpp (outside the repository)."""
    build = peers_build_dir()
    tools = ["llama-batched-bench", "llama-server"]
    if all((build / "bin" / t).exists() for t in tools):
        return build / "bin"
    try:
        src = subprocess.run([sys.executable, str(REPO / "native/tools/llama_dist.py"),
                              "source"], check=True, capture_output=True, text=True,
                             cwd=REPO).stdout.strip().splitlines()[-1]
    except (subprocess.CalledProcessError, IndexError, OSError) as exc:
        raise PeerUnavailable(f"no llama.cpp source from llama_dist.py: {exc}") from exc
    log = build.parent / "peers-build.log"
    build.mkdir(parents=True, exist_ok=True)
    print(f"building {', '.join(tools)} from {src} into {build} (log: {log}) ...",
          file=sys.stderr, flush=True)
    steps = [["cmake", "-S", src, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF"],
             ["cmake", "--build", str(build), "--target", *tools, "-j"]]
    with log.open("w") as out:
        for step in steps:
            try:
                subprocess.run(step, check=True, stdout=out, stderr=subprocess.STDOUT)
            except (subprocess.CalledProcessError, OSError) as exc:
                raise PeerUnavailable(f"building the llama.cpp peers failed ({exc}); "
                                      f"see {log}") from exc
    missing = [t for t in tools if not (build / "bin" / t).exists()]
    if missing:
        raise PeerUnavailable(f"the build made no {', '.join(missing)}; see {log}")
    return build / "bin"


_ROW = re.compile(r"^\|\s*\d+\s*\|")
_COLUMNS = ["PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s"]


def parse_batched_bench(text: str) -> dict[int, dict[str, float]]:
    """Its markdown table, by B (the number of parallel sequences)."""
    rows = {}
    for line in text.splitlines():
        if _ROW.match(line.strip()):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            row = dict(zip(_COLUMNS, map(float, cells), strict=True))
            rows[int(row["B"])] = row
    return rows


def run_batched_bench(setup: Setup, result: PeerResult) -> None:
    tool = ensure_llama_tools() / "llama-batched-bench"
    result.command = [str(tool), "-m", str(setup.model), "-c", str(setup.n_ctx), "-b", "2048",
                      "-ub", "512", "-npp", "64", "-ntg", str(setup.max_tokens),
                      "-npl", ",".join(map(str, setup.ns)), "-t", str(setup.threads)]
    bench = ManagedProcess("llama-batched-bench", result.command, setup.log_dir)
    try:
        with RssSampler(bench.pid) as rss:
            bench.proc.wait()
            result.info["peak_rss_mb"] = rss.overall_peak / MB
    finally:
        bench.stop()
    if bench.proc.returncode != 0:
        raise PeerUnavailable(f"llama-batched-bench exited with {bench.proc.returncode}:\n"
                              f"{bench.log_tail()}")
    rows = parse_batched_bench(bench.log_path.read_text(errors="replace"))
    for n in setup.ns:
        if n in rows:
            result.levels.append(load.LevelResult(n=n, agg_tok_s=rows[n]["S_TG t/s"],
                                                  extra={"table_row": rows[n]}))
    if not result.levels:
        raise PeerUnavailable(f"no table in llama-batched-bench's output:\n{bench.log_tail()}")


def run_llama_server(setup: Setup, result: PeerResult) -> None:
    tool = ensure_llama_tools() / "llama-server"
    port = free_port()
    t = str(setup.threads)
    result.command = [str(tool), "-m", str(setup.model), "--host", HOST, "--port", str(port),
                      "-np", str(setup.n_parallel), "-c", str(setup.n_ctx), "-t", t, "-tb", t,
                      "--no-webui"]
    _run_http(setup, result, port, "/health", load.LLAMA_SERVER, setup.ns)


# -- llama-cpp-python ------------------------------------------------------------------------

def run_llama_cpp_inprocess(setup: Setup, result: PeerResult) -> None:
    """N=1 only: Llama.create_completion streams one request at a time."""
    result.command = [sys.executable, "-m", "benchmarks.inprocess_worker", str(setup.model),
                      str(setup.threads), str(setup.n_ctx), str(setup.max_tokens)]
    if 1 not in setup.ns:
        raise PeerSkipped("measured at N=1 only, which this run leaves out")
    out = setup.log_dir / "llama-cpp-python-inprocess.out"
    with tempfile.TemporaryFile("w+") as prompt_file, out.open("w") as stdout:
        prompt_file.write(setup.prompts[1][0][0])
        prompt_file.seek(0)
        worker = subprocess.Popen(result.command, stdin=prompt_file, stdout=stdout,
                                  stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
        try:
            with RssSampler(worker.pid) as rss:
                worker.wait(timeout=load.STREAM_TIMEOUT_S)
                peak = rss.overall_peak
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    lines = out.read_text().strip().splitlines()
    if worker.returncode != 0 or not lines:
        raise PeerUnavailable(f"the worker exited with {worker.returncode}: {lines[-3:]}")
    record = load.StreamRecord.from_json(json.loads(lines[-1]))
    level = load.summarize(1, [record], setup.max_tokens)
    level.peak_rss_mb = peak / MB
    result.levels.append(level)
    result.info["peak_rss_mb"] = peak / MB


LLAMA_CPP_SERVER_DEPS = ["uvicorn", "fastapi", "sse_starlette", "starlette_context",
                         "pydantic_settings"]
LLAMA_CPP_SERVER_NS = (1, 4, 8)


def run_llama_cpp_server(setup: Setup, result: PeerResult, interrupt: bool) -> None:
    port = free_port()
    t = str(setup.threads)
    result.command = [sys.executable, "-m", "llama_cpp.server", "--model", str(setup.model),
                      "--n_ctx", str(setup.n_ctx), "--n_threads", t, "--n_threads_batch", t,
                      "--host", HOST, "--port", str(port)]
    if not interrupt:
        result.command += ["--interrupt_requests", "False"]
    missing = [m for m in LLAMA_CPP_SERVER_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        raise PeerSkipped(f"missing {', '.join(missing)} "
                          f"(pip install 'llama-cpp-python[server]')")
    ns = [n for n in setup.ns if n in LLAMA_CPP_SERVER_NS]
    if not ns:
        raise PeerSkipped("measured at N in {1, 4, 8} only, which this run leaves out")
    _run_http(setup, result, port, "/v1/models", load.OPENAI_COMPLETIONS, ns)


def _run_http(setup: Setup, result: PeerResult, port: int, health: str, api: load.SseApi,
              ns: list[int]) -> None:
    server = ManagedProcess(result.key, result.command, setup.log_dir)
    try:
        server.wait_until(lambda: http_status(HOST, port, health) == 200, READY_TIMEOUT_S,
                          f"200 from GET {health}")

        def drive(prompts: list[str], max_tokens: int) -> list[load.StreamRecord]:
            return load.drive_sse(HOST, port, api, prompts, max_tokens)

        _measure(server, setup, ns, drive, result)
    finally:
        server.stop()


# -- Hearth ------------------------------------------------------------------------------------

def run_hearth(setup: Setup, result: PeerResult) -> None:
    ready = setup.log_dir / "hearth-ready.json"
    result.command = [sys.executable, "-m", "runtime.cli.main", "serve",
                      "--model", f"bench={setup.model}", "--listen", f"{HOST}:0",
                      "--parallel", str(setup.n_parallel), "--ctx", str(setup.n_ctx),
                      "--threads", str(setup.threads), "--ready-file", str(ready)]
    server = ManagedProcess("hearth", result.command, setup.log_dir)
    try:
        server.wait_until(ready.exists, READY_TIMEOUT_S, "ready file")
        addr = json.loads(ready.read_text())["addresses"][0]
        from runtime.client import HearthClient

        with HearthClient(addr, timeout=30) as client:
            status = client.get_model("bench")
        result.info.update(address=addr, weights_bytes=status.weights_bytes,
                           kv_cache_bytes=status.kv_cache_bytes, n_ctx=status.n_ctx,
                           slots=status.slots_total, load_seconds=status.load_seconds)

        def drive(prompts: list[str], max_tokens: int) -> list[load.StreamRecord]:
            return load.drive_hearth(addr, "bench", prompts, max_tokens)

        _measure(server, setup, setup.ns, drive, result)
    finally:
        server.stop()
    model_and_kv = (setup.model.stat().st_size + result.info["kv_cache_bytes"]) / MB
    result.info["model_file_mb"] = setup.model.stat().st_size / MB
    result.info["kv_cache_mb"] = result.info["kv_cache_bytes"] / MB
    result.info["rss_beyond_model_kv_idle_mb"] = result.info["idle_rss_mb"] - model_and_kv
    result.info["rss_beyond_model_kv_peak_mb"] = result.info["peak_rss_mb"] - model_and_kv
