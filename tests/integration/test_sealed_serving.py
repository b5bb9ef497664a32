"""The daemon serving sealed models from the store, with the audit log on."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import models_pb2 as mpb
from tests.integration.conftest import Daemon, start_daemon


def hearth(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", *args],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sealed")
    state_dir, key = base / "state", base / "master.key"
    hearth("keys", "init", "--state-dir", str(state_dir), "--key-file", str(key))
    for name in ("tiny", "spare"):
        hearth("models", "import", str(tiny_model), "--name", name, "--state-dir",
               str(state_dir), "--key-file", str(key))
    return state_dir, key


@pytest.fixture(scope="module")
def sealed_daemon(state: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Daemon]:
    state_dir, key = state
    d = start_daemon(["--model", "tiny", "--state-dir", str(state_dir), "--key-file", str(key),
                      "--listen", "127.0.0.1:0", "--parallel", "2", "--ctx", "2048",
                      "--audit-content"], tmp_path_factory.mktemp("sealed-daemon"))
    yield d
    assert d.stop() == 0, d.log()


def test_sealed_model_gives_the_plaintext_models_tokens(sealed_daemon: Daemon,
                                                        tiny_daemon: Daemon) -> None:
    with sealed_daemon.client() as s, tiny_daemon.client() as p:
        sealed = s.complete("the patient has", max_tokens=20, temperature=0.0, ignore_eos=True)
        plain = p.complete("the patient has", max_tokens=20, temperature=0.0, ignore_eos=True)
        status = s.get_model("tiny")
    assert sealed[1] == plain[1]
    assert status.source.startswith("store:tiny v1")


def test_requests_are_audited_and_erasable(sealed_daemon: Daemon, state: tuple[Path, Path]
                                           ) -> None:
    state_dir, key = state
    with sealed_daemon.client() as c:
        for subject in ("patient-17", "patient-42"):
            list(c.inference.Generate(ipb.GenerateRequest(prompt=f"notes for {subject}",
                                                          max_tokens=3),
                                      metadata=(("x-hearth-subject", subject),)))
    sealed_daemon.stop()     # closing flushes the log with a signed checkpoint
    assert "intact" in hearth("audit", "verify", "--state-dir", str(state_dir), "--key-file",
                             str(key)).stdout
    common = ["--state-dir", str(state_dir), "--key-file", str(key)]
    hearth("audit", "erase", "--subject", "patient-17", *common)
    exported = hearth("audit", "export", *common).stdout
    assert "notes for patient-42" in exported and "notes for patient-17" not in exported
    assert '"content": "erased"' in exported
    assert "intact" in hearth("audit", "verify", "--state-dir", str(state_dir), "--key-file",
                             str(key)).stdout


def test_damaged_sealed_model_is_refused_and_the_daemon_keeps_serving(
        state: tuple[Path, Path], tmp_path: Path) -> None:
    state_dir, key = state
    listing = hearth("store", "list", "--state-dir", str(state_dir), "--key-file", str(key))
    assert "spare" in listing.stdout
    d = start_daemon(["--model", "tiny", "--state-dir", str(state_dir), "--key-file", str(key),
                      "--listen", "127.0.0.1:0", "--listen", f"unix:{tmp_path}/h.sock",
                      "--parallel", "1", "--ctx", "1024", "--no-audit"], tmp_path)
    try:
        files = sorted((state_dir / "objects").glob("*.sealed"), key=os.path.getmtime)
        spare = files[1]                             # imported second
        data = bytearray(spare.read_bytes())
        data[len(data) // 2] ^= 0x10
        spare.write_bytes(bytes(data))
        with d.admin_client() as c:
            with pytest.raises(grpc.RpcError) as err:
                c.models.Load(mpb.LoadModelRequest(name="spare"))
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
            assert "failed authentication" in err.value.details()
            assert c.complete("still here", model="tiny", max_tokens=2)[2].usage \
                .completion_tokens == 2
    finally:
        assert d.stop() == 0


def test_wrong_key_refuses_to_start(state: tuple[Path, Path], tmp_path: Path) -> None:
    state_dir, _ = state
    other = tmp_path / "other.key"
    hearth("keys", "init", "--state-dir", str(tmp_path / "x"), "--key-file", str(other))
    proc = hearth("serve", "--model", "tiny", "--state-dir", str(state_dir), "--key-file",
                  str(other), "--listen", "127.0.0.1:0", check=False)
    assert proc.returncode == 8
    assert "does not open this store" in proc.stderr
