"""Standard health and reflection services, loading states, and SIGTERM."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from runtime._proto.hearth.v1 import models_pb2 as mpb
from tests.integration.conftest import Daemon

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(addr: str, service: str = "") -> int:
    """What grpc_health_probe does: one Check call with a deadline."""
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_overall_per_service_and_per_model(tiny_daemon: Daemon) -> None:
    assert check(tiny_daemon.tcp) == SERVING
    assert check(tiny_daemon.tcp, "hearth.v1.Inference") == SERVING
    assert check(tiny_daemon.tcp, "hearth.v1.Models") == SERVING
    assert check(tiny_daemon.tcp, "tiny") == SERVING
    with pytest.raises(grpc.RpcError) as err:
        check(tiny_daemon.tcp, "no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(tiny_daemon: Daemon) -> None:
    with grpc.insecure_channel(tiny_daemon.tcp) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"hearth.v1.Inference", "hearth.v1.Models", "grpc.health.v1.Health"} <= services
        desc = db.FindFileContainingSymbol("hearth.v1.GenerateRequest")
        fields = {f.name for m in desc.message_type if m.name == "GenerateRequest"
                  for f in m.field}
        assert {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed",
                "stop"} <= fields


def test_model_health_follows_load_and_unload(daemon_factory, tiny_model: Path,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    models = tmp_path / "m"
    models.mkdir()
    (models / "extra.gguf").write_bytes(tiny_model.read_bytes())
    d = daemon_factory("--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                       "--listen", f"unix:{tmp_path}/h.sock",
                       "--models-dir", str(models), "--parallel", "2", "--ctx", "1024")
    with d.admin_client() as c:
        assert c.load_model("extra", n_ctx=512, n_parallel=1).state == mpb.MODEL_STATE_READY
        assert check(d.tcp, "extra") == SERVING
        # With two models loaded the name is required.
        with pytest.raises(grpc.RpcError) as err:
            c.complete("hi", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert c.unload_model("extra").state == mpb.MODEL_STATE_UNLOADED
        assert check(d.tcp, "extra") == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        assert c.list_models().available == ["extra"]
        with pytest.raises(grpc.RpcError) as err:
            c.complete("hi", model="extra", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_unload_drains_running_streams(daemon_factory, tiny_model: Path,  # type: ignore[no-untyped-def]
                                      tmp_path: Path) -> None:
    d = daemon_factory("--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                       "--listen", f"unix:{tmp_path}/h.sock",
                       "--parallel", "2", "--ctx", "2048", "--threads", "1")
    with d.admin_client() as c:
        result: dict[str, object] = {}
        t = threading.Thread(target=lambda: result.update(r=c.complete(
            "hello", max_tokens=1000, temperature=0.0, ignore_eos=True)))
        t.start()
        time.sleep(0.05)
        status = c.unload_model("tiny", drain_timeout=60)
        t.join(30)
        assert status.state == mpb.MODEL_STATE_UNLOADED
        assert result["r"][2].usage.completion_tokens == 1000  # type: ignore[index]


def test_sigterm_drains_then_exits_cleanly(daemon_factory, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    d = daemon_factory("--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                       "--parallel", "2", "--ctx", "2048", "--threads", "1")
    with d.client() as c:
        result: dict[str, object] = {}

        def stream() -> None:
            result["r"] = c.complete("hello", max_tokens=1000, temperature=0.0,
                                     ignore_eos=True)

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 10
        while c.get_model().slots_busy == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        # Health flips at once; new work is refused while the stream finishes.
        assert check(d.tcp) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            c.complete("late", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        t.join(60)
    assert result["r"][2].usage.completion_tokens == 1000  # type: ignore[index]
    assert d.proc.wait(30) == 0
    assert "draining" in d.log()


def test_non_loopback_listen_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", "--model",
                           f"tiny={tiny_model}", "--listen", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3  # ExitCode.CONFIG
    assert "refusing to listen on 0.0.0.0:0 without authentication" in proc.stderr


def test_unloadable_model_at_start_exits_with_model_load(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", "--model",
                           f"bad={bad}", "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4  # ExitCode.MODEL_LOAD
    assert "not a GGUF file" in proc.stderr
