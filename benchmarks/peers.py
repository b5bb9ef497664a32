"""The peers as running things: each is started once, measured one repetition at a time
(so the orchestrator can interleave them), and stopped.

A peer that cannot start or dies raises PeerUnavailable; the orchestrator records why
and goes on with the rest.  Command lines and log parsing live in `lineup`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks import load
from benchmarks.lineup import (
    DEFAULTS,
    HOST,
    SUBJECT,
    TUNED,
    HearthSettings,
    PeerSpec,
    Setup,
    batched_bench_command,
    hearth_command,
    inprocess_command,
    llama_cpp_server_command,
    llama_server_command,
    parse_batched_bench,
    parse_kv_buffer_mib,
)
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
READY_TIMEOUT_S = 300.0
WARM_UP_PROMPT = "Warm-up request: say hello."


@dataclass
class PeerResult:
    key: str
    label: str
    variant: str = ""
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


class Peer:
    """Start once, `run` one repetition at one N, stop once."""

    def __init__(self, spec: PeerSpec, setup: Setup, settings: HearthSettings) -> None:
        self.spec, self.setup, self.settings = spec, setup, settings
        self.result = PeerResult(key=spec.key, label=spec.label, variant=spec.variant)

    def start(self) -> None:
        """Raises PeerUnavailable (PeerSkipped) when the peer cannot (need not) run here."""

    def run(self, n: int, rep: int) -> load.LevelResult:
        raise NotImplementedError

    def stop(self) -> None:
        """Idempotent; records what the peer's log says once it is over."""


# -- llama.cpp's own tools ------------------------------------------------------------------

def peers_cmake_args() -> list[str]:
    """CMAKE_ARGS, the variable llama-cpp-python's own build reads, so the peers are built
    with the same llama.cpp options as the library Hearth runs on (a CUDA build, AMX off).
    Unset, the CPU build's own options (llama_dist.py cmake-args): a peer built without
    them can use kernels the Hearth build leaves out (AMX), or die on them (SIGILL)."""
    args = os.environ.get("CMAKE_ARGS")
    if args is None:
        try:
            args = subprocess.run([sys.executable, str(REPO / "native/tools/llama_dist.py"),
                                   "cmake-args"], check=True, capture_output=True,
                                  text=True, cwd=REPO).stdout.strip()
        except (subprocess.CalledProcessError, OSError) as exc:
            raise PeerUnavailable(f"no CMake options from llama_dist.py: {exc}") from exc
    return shlex.split(args)


def peers_build_dir() -> Path:
    """HEARTH_PEERS_BUILD, else a cache folder, one per set of CMAKE_ARGS."""
    args = peers_cmake_args()
    name = "peers-build" + (f"-{hashlib.sha256(' '.join(args).encode()).hexdigest()[:8]}"
                            if args else "")
    return Path(os.environ.get("HEARTH_PEERS_BUILD") or Path.home() / ".cache/hearth" / name)


LLAMA_TOOLS = ("llama-batched-bench", "llama-server")


def ensure_llama_tools() -> Path:
    """The bin dir holding llama-batched-bench and llama-server, built once from the pinned
    llama-cpp-python sdist's vendor/llama.cpp (outside the repository)."""
    build = peers_build_dir()
    if all((build / "bin" / t).exists() for t in LLAMA_TOOLS):
        return build / "bin"
    try:
        src = subprocess.run([sys.executable, str(REPO / "native/tools/llama_dist.py"),
                              "source"], check=True, capture_output=True, text=True,
                             cwd=REPO).stdout.strip().splitlines()[-1]
    except (subprocess.CalledProcessError, IndexError, OSError) as exc:
        raise PeerUnavailable(f"no llama.cpp source from llama_dist.py: {exc}") from exc
    log = build.parent / f"{build.name}.log"
    build.mkdir(parents=True, exist_ok=True)
    print(f"building {', '.join(LLAMA_TOOLS)} from {src} into {build} (log: {log}) ...",
          file=sys.stderr, flush=True)
    steps = [["cmake", "-S", src, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
              *peers_cmake_args()],
             ["cmake", "--build", str(build), "--target", *LLAMA_TOOLS, "-j",
              str(os.cpu_count() or 1)]]    # a bare -j starts every job at once
    with log.open("w") as out:
        for step in steps:
            _build_step(step, out, log)
    missing = [t for t in LLAMA_TOOLS if not (build / "bin" / t).exists()]
    if missing:
        raise PeerUnavailable(f"the build made no {', '.join(missing)}; see {log}")
    return build / "bin"


def _build_step(step: list[str], out: IO[str], log: Path) -> None:
    """One build command in its own process group, so a benchmark that is stopped while
    it builds stops the compilers too."""
    try:
        build = subprocess.Popen(step, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    except OSError as exc:
        raise PeerUnavailable(f"cannot run {step[0]}: {exc}") from exc
    try:
        code = build.wait()
    finally:
        if build.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(build.pid, signal.SIGKILL)
            build.wait()
    if code != 0:
        raise PeerUnavailable(f"building the llama.cpp peers failed ({step[:2]} exited with "
                              f"{code}); see {log}")


class BatchedBenchPeer(Peer):
    """llama-batched-bench, one process per N and repetition; its S_TG column (decode
    only) is the figure, so there is no TTFT."""

    def start(self) -> None:
        self.tool = ensure_llama_tools() / "llama-batched-bench"
        self.result.command = batched_bench_command(self.tool, self.setup, 0, self.settings)
        self.result.command[self.result.command.index("-npl") + 1] = "N"

    def run(self, n: int, rep: int) -> load.LevelResult:
        cmd = batched_bench_command(self.tool, self.setup, n, self.settings)
        bench = ManagedProcess(f"batched-bench-{n}-{rep}", cmd, self.setup.log_dir)
        try:
            with RssSampler(bench.pid) as rss:
                bench.proc.wait()
                peak = rss.overall_peak
        finally:
            bench.stop()
        text = bench.log_path.read_text(errors="replace")
        if bench.proc.returncode != 0:
            raise PeerUnavailable(f"llama-batched-bench exited with {bench.proc.returncode}:"
                                  f"\n{bench.log_tail()}")
        row = parse_batched_bench(text).get(n)
        if row is None:
            raise PeerUnavailable(f"no row for B={n} in llama-batched-bench's output:\n"
                                  f"{bench.log_tail()}")
        self.result.info.setdefault("kv_allocated_mb", parse_kv_buffer_mib(text))
        return load.LevelResult(n=n, agg_tok_s=row["S_TG t/s"], decode_tok_s=row["S_TG t/s"],
                                peak_rss_mb=peak / MB,
                                extra={"table_row": row})


# -- llama-cpp-python in process -------------------------------------------------------------

class InProcessPeer(Peer):
    """Llama.create_completion in a worker process, one stream, a fresh worker per run."""

    def start(self) -> None:
        self.result.command = inprocess_command(self.setup, self.spec.variant == TUNED,
                                                self.settings)

    def run(self, n: int, rep: int) -> load.LevelResult:
        out = self.setup.log_dir / f"{self.spec.key}-{rep}.out"
        with tempfile.TemporaryFile("w+") as prompt_file, out.open("w") as stdout:
            prompt_file.write(self.setup.prompts[1][rep][0])
            prompt_file.seek(0)
            worker = subprocess.Popen(self.result.command, stdin=prompt_file, stdout=stdout,
                                      stderr=subprocess.DEVNULL, cwd=REPO,
                                      start_new_session=True)
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
        level = load.summarize(1, [record], self.setup.max_tokens)
        level.peak_rss_mb = peak / MB
        return level


# -- servers ---------------------------------------------------------------------------------

Driver = Callable[[list[str], int], list[load.StreamRecord]]  # (prompts, max_tokens)


class ServerPeer(Peer):
    """A server started once and left idle while the others run; each repetition drives
    N concurrent streams at it while its process tree's RSS is sampled."""

    server: ManagedProcess | None = None
    drive: Driver

    def launch(self) -> None:
        """Starts the server, waits until it is ready and sets `drive`."""
        raise NotImplementedError

    def start(self) -> None:
        self.launch()
        assert self.server is not None
        self.result.info["idle_rss_mb"] = RssSampler(self.server.pid).sample() / MB
        warm_up = self.drive([WARM_UP_PROMPT], 8)[0]
        if not warm_up.arrivals or warm_up.error:
            died = ("" if self.server.alive()
                    else f"; the server exited with {self.server.proc.returncode}")
            raise PeerUnavailable(f"the warm-up request failed "
                                  f"({warm_up.error or 'no token'}){died}:\n"
                                  f"{self.server.log_tail()}")

    def run(self, n: int, rep: int) -> load.LevelResult:
        assert self.server is not None
        with RssSampler(self.server.pid) as rss:
            records = self.drive(self.setup.prompts[n][rep], self.setup.max_tokens)
            peak = rss.window_peak()
        level = load.summarize(n, records, self.setup.max_tokens)
        level.peak_rss_mb = peak / MB
        server_ttft = load.server_ttft_p50(records)
        if server_ttft is not None:
            level.extra["server_ttft_p50_s"] = server_ttft
        if not self.server.alive():
            raise PeerUnavailable(f"{self.server.name} died at N={n}:\n"
                                  f"{self.server.log_tail()}")
        return level

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.stop()
        kv = parse_kv_buffer_mib(self.server.log_path.read_text(errors="replace"))
        self.result.info.setdefault("kv_allocated_mb", kv)
        self.server = None

    def _http(self, health: str, api: load.SseApi) -> None:
        port = int(self.result.command[self.result.command.index("--port") + 1])
        self.server = ManagedProcess(self.spec.key, self.result.command, self.setup.log_dir)
        self.server.wait_until(lambda: http_status(HOST, port, health) == 200,
                               READY_TIMEOUT_S, f"200 from GET {health}")
        self.drive = lambda prompts, max_tokens: load.drive_sse(HOST, port, api, prompts,
                                                                max_tokens)


class LlamaServerPeer(ServerPeer):
    def launch(self) -> None:
        tool = ensure_llama_tools() / "llama-server"
        self.result.command = llama_server_command(tool, self.setup, free_port(),
                                                   self.spec.variant == TUNED, self.settings)
        self._http("/health", load.LLAMA_SERVER)


LLAMA_CPP_SERVER_DEPS = ["uvicorn", "fastapi", "sse_starlette", "starlette_context",
                         "pydantic_settings"]


class LlamaCppServerPeer(ServerPeer):
    def launch(self) -> None:
        self.result.command = llama_cpp_server_command(self.setup, free_port(),
                                                       self.spec.variant == TUNED,
                                                       self.settings)
        missing = [m for m in LLAMA_CPP_SERVER_DEPS if importlib.util.find_spec(m) is None]
        if missing:
            raise PeerSkipped(f"missing {', '.join(missing)} "
                              f"(pip install 'llama-cpp-python[server]')")
        self._http("/v1/models", load.OPENAI_COMPLETIONS)


class HearthPeer(ServerPeer):
    """The daemon over gRPC through its own client.  Memory: the KV llama.cpp allocated
    comes from `settings` (read from a probe start's log, see `probe_hearth`)."""

    def launch(self) -> None:
        ready = self.setup.log_dir / "hearth-ready.json"
        self.result.command = hearth_command(self.setup, ready)
        self.server = ManagedProcess("hearth", self.result.command, self.setup.log_dir)
        self.server.wait_until(ready.exists, READY_TIMEOUT_S, "ready file")
        addr = json.loads(ready.read_text())["addresses"][0]
        from runtime.client import HearthClient

        with HearthClient(addr, timeout=30) as client:
            status = client.get_model("bench")
        self.result.info.update(address=addr, weights_bytes=status.weights_bytes,
                                kv_upper_bound_mb=status.kv_cache_bytes / MB,
                                n_ctx=status.n_ctx, slots=status.slots_total,
                                load_seconds=status.load_seconds,
                                kv_allocated_mb=self.settings.kv_buffer_mib,
                                kv_allocated_source=self.settings.source)
        self.drive = lambda prompts, max_tokens: load.drive_hearth(addr, "bench", prompts,
                                                                   max_tokens)


def probe_hearth(setup: Setup) -> HearthSettings:
    """Starts Hearth once with llama.cpp's info lines on (`--log-level debug`), reads the
    settings its context runs with and the KV buffers it allocated, and stops it.  The
    measured Hearth then runs at its default log level; nothing else differs."""
    ready = setup.log_dir / "hearth-probe-ready.json"
    probe = ManagedProcess("hearth-probe", hearth_command(setup, ready, log_level="debug"),
                           setup.log_dir)
    try:
        probe.wait_until(ready.exists, READY_TIMEOUT_S, "ready file")
    finally:
        probe.stop()
    return HearthSettings.from_log(probe.log_path.read_text(errors="replace"),
                                   source="llama.cpp's log of a Hearth start "
                                          "with --log-level debug")


PEER_CLASSES: dict[str, type[Peer]] = {
    "batched-bench": BatchedBenchPeer,
    "llama-cpp-python": InProcessPeer,
    "llama-server": LlamaServerPeer,
    "llama-cpp-python-server": LlamaCppServerPeer,
    "hearth": HearthPeer,
}


def make_peer(spec: PeerSpec, setup: Setup, settings: HearthSettings) -> Peer:
    return PEER_CLASSES[spec.family](spec, setup, settings)


def finish_memory(result: PeerResult, model_bytes: int) -> None:
    """RSS beyond the model file and the KV llama.cpp actually allocated, idle and at peak,
    where the peer's log gave the KV figure."""
    info = result.info
    info["model_file_mb"] = model_bytes / MB
    kv = info.get("kv_allocated_mb")
    peaks = [lv.peak_rss_mb for lv in result.levels if lv.peak_rss_mb is not None]
    if peaks:
        info["peak_rss_mb"] = max(peaks)
    if kv is None or result.variant not in (DEFAULTS, TUNED, SUBJECT):
        return
    base = info["model_file_mb"] + kv
    if "idle_rss_mb" in info:
        info["rss_beyond_model_kv_idle_mb"] = info["idle_rss_mb"] - base
    if peaks:
        info["rss_beyond_model_kv_peak_mb"] = info["peak_rss_mb"] - base
