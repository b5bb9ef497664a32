"""One model across two processes through ggml's RPC backend: a `hearth
rpc-worker` on loopback lends its CPU, a daemon splits a model between its
own CPU and the worker (docs/scale-out.md)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from runtime import errors
from runtime.config import Config, load_config
from runtime.doctor import DoctorInput, Status, check_rpc_workers
from runtime.models.tiny import write_tiny_model
from runtime.native import rpc
from tests.integration.conftest import Daemon, start_daemon
from tests.integration.near_tie import assert_same_greedy

pytestmark = pytest.mark.skipif(not rpc.available(),
                                reason="llama.cpp was built without GGML_RPC")

PROMPTS = ["the patient", "a b c d", "once upon a time there"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    endpoint: str
    log_path: Path

    def connections(self) -> tuple[int, int]:
        """(accepted, closed) client connections, from ggml's server log."""
        text = self.log_path.read_text()
        return text.count("Accepted client connection"), text.count("Client connection closed")


@pytest.fixture
def rpc_worker(tmp_path: Path) -> Iterator[Worker]:
    """`hearth rpc-worker` on a loopback port, ready when it answers a probe."""
    endpoint = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "rpc-worker",
                             "--listen", endpoint, "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            rpc.probe(endpoint, 1.0)
            break
        except errors.HearthError:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
    yield Worker(endpoint, tmp_path / "worker.log")
    proc.terminate()
    proc.wait(10)


def _config(path: Path, models: dict[str, str]) -> Path:
    lines = ["[server]", 'listen = ["127.0.0.1:0"]', "grace_period_s = 5"]
    for name, extra in models.items():
        lines += ["", f"[models.{name}]", extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def _greedy(d: Daemon, model: str) -> list[list[int]]:
    with d.client() as c:
        return [c.complete(p, model=model, max_tokens=24, temperature=0.0)[1] for p in PROMPTS]


def test_split_over_a_worker_matches_the_unsplit_model(rpc_worker: Worker,
                                                       tmp_path: Path) -> None:
    """Two (and, in a second model sharing the worker, three) of the model's
    four layers run in the worker process; greedy output equals the same
    model on the local CPU alone.  Fails if the
    engine ignores rpc_workers (then no connection stays open to the worker:
    checked with model.c's hook removed) or if the split changes the
    numbers."""
    worker = rpc_worker.endpoint
    model = write_tiny_model(tmp_path / "tiny4.gguf", n_layer=4)
    common = f'path = "{model}"\nthreads = 1\nn_ctx = 1024\nn_parallel = 2'
    cfg = _config(tmp_path / "hearth.toml", {
        "local": f"{common}\nn_gpu_layers = 0",
        "split": f'{common}\nn_gpu_layers = 2\nrpc_workers = ["{worker}"]',
        "split3": f'{common}\nn_gpu_layers = 3\nrpc_workers = ["{worker}"]'})
    d = start_daemon(["--config", str(cfg)], tmp_path)
    try:
        split, local = _greedy(d, "split"), _greedy(d, "local")
        assert split == local == _greedy(d, "split3")   # two models share the worker
        accepted, closed = rpc_worker.connections()
        assert accepted == closed + 1, "the daemon holds no connection to the worker"
        start = time.monotonic()
        _greedy(d, "split")
        split_s = time.monotonic() - start
        start = time.monotonic()
        _greedy(d, "local")
        local_s = time.monotonic() - start
        n = sum(len(t) for t in split)
        print(f"\n[rpc] tiny 4-layer model, {n} greedy tokens: local {n / local_s:.0f} "
              f"tokens/s, 2 layers on a loopback worker {n / split_s:.0f} tokens/s")
    finally:
        assert d.stop() == 0, d.log()


def test_unreachable_worker_fails_only_its_model(tiny_model: Path, tmp_path: Path) -> None:
    """A model whose worker does not answer is FAILED with an error naming
    the worker; the daemon starts and serves its other model, and `hearth
    doctor` flags the worker.  Fails without the probe before ggml connects
    (ggml aborts the whole process on an unreachable worker) and without the
    start-up rule for RPC models in daemon.py (the daemon exits)."""
    ghost = f"127.0.0.1:{free_port()}"
    cfg = _config(tmp_path / "hearth.toml", {
        "ok": f'path = "{tiny_model}"\nthreads = 1\nn_ctx = 1024',
        "far": f'path = "{tiny_model}"\nthreads = 1\nn_ctx = 1024\nn_gpu_layers = 1\n'
               f'rpc_workers = ["{ghost}"]'})
    d = start_daemon(["--config", str(cfg)], tmp_path)
    try:
        with d.client() as c:
            assert c.complete("hi", model="ok", max_tokens=4)[1]
            far = c.get_model("far")
            assert far.state == 4 and ghost in far.error, far       # FAILED, names the worker
            with pytest.raises(grpc.RpcError) as err:
                c.complete("hi", model="far", max_tokens=4)
            assert ghost in err.value.details()
        assert "not reachable" in d.log() and ghost in d.log()
    finally:
        assert d.stop() == 0, d.log()
    config: Config = load_config(str(cfg))
    findings = list(check_rpc_workers(DoctorInput(config, [], tmp_path, None, None)))
    assert [f.status for f in findings] == [Status.FAIL] and ghost in findings[0].detail


def test_doctor_reports_a_worker_and_its_memory(rpc_worker: Worker, tmp_path: Path) -> None:
    """Fails if the probe does not reach the worker or reports no memory."""
    worker = rpc_worker.endpoint
    cfg = _config(tmp_path / "hearth.toml", {
        "m": f'path = "/nonexistent.gguf"\nrpc_workers = ["{worker}"]\nload = false'})
    findings = list(check_rpc_workers(DoctorInput(load_config(str(cfg)), [], tmp_path, None,
                                                  None)))
    assert [f.status for f in findings] == [Status.OK], findings
    assert worker in findings[0].detail and "GiB free" in findings[0].detail
    info = rpc.probe(worker)
    assert info.devices and info.devices[0].total_bytes > 0


@pytest.mark.gemma
def test_gemma_split_over_a_worker(rpc_worker: Worker, gemma_model: Path,
                                   tmp_path: Path) -> None:
    """Gemma 3 270M with half its 18 layers on the worker: greedy output as
    on the local CPU alone, up to a near-tie (the worker's CPU backend does
    not repack weights as the local one does, so sums may differ in the last
    bits).  Prints both rates for docs/scale-out.md."""
    worker = rpc_worker.endpoint
    common = f'path = "{gemma_model}"\nthreads = 1\nn_ctx = 2048\nn_parallel = 1'
    cfg = _config(tmp_path / "hearth.toml", {
        "local": f"{common}\nn_gpu_layers = 0",
        "split": f'{common}\nn_gpu_layers = 9\nrpc_workers = ["{worker}"]'})
    d = start_daemon(["--config", str(cfg)], tmp_path, wait=180)
    try:
        rates: dict[str, float] = {}
        with d.client(timeout=300) as c:
            for prompt in ["The capital of France is", "Write a haiku about snow."]:
                tokens = c.tokenize(prompt, model="local")
                out: dict[str, list[int]] = {}
                for name in ("local", "split"):
                    start = time.monotonic()
                    out[name] = c.complete(prompt, model=name, max_tokens=32,
                                           temperature=0.0, ignore_eos=True)[1]
                    rates[name] = rates.get(name, 0.0) + len(out[name]) / (time.monotonic()
                                                                            - start)
                assert_same_greedy(gemma_model, tokens, out["split"], out["local"], tie=0.25)
        print(f"\n[rpc] gemma-3-270m greedy, 32 tokens: local CPU {rates['local'] / 2:.1f} "
              f"tokens/s, 9 of 18 layers on a loopback worker {rates['split'] / 2:.1f} tokens/s")
    finally:
        assert d.stop() == 0, d.log()
