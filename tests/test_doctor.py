"""hearth doctor against real state directories, stores, configs and units."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import Config, ModelConfig
from runtime.doctor import DoctorInput, Finding, Status, mem_available, model_bytes, run_checks
from runtime.exit_codes import ExitCode
from runtime.storage.keys import create_key_file, key_from_file
from runtime.storage.store import SealedStore
from tests.conftest import have_tool

UNIT = Path(__file__).resolve().parents[1] / "packaging" / "systemd" / "hearth.service"


@pytest.fixture
def site(tmp_path: Path, tiny_model: Path) -> dict:
    """A state directory with one sealed model and a config using it and a
    plain file."""
    state, key = tmp_path / "state", tmp_path / "master.key"
    create_key_file(str(key))
    store = SealedStore.init(state, key_from_file(str(key)))
    store.import_file(tiny_model, "sealed-tiny")
    store.close()
    config = tmp_path / "hearth.toml"
    config.write_text(f'[models.plain]\npath = "{tiny_model}"\nn_ctx = 2048\n\n'
                      "[models.sealed-tiny]\nstore = true\n")
    return {"state": state, "key": key, "config": config}


def doctor(site: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", "doctor", "--json",
                           "--config", str(site["config"]), "--state-dir", str(site["state"]),
                           *extra], capture_output=True, text=True, check=False, timeout=120)


def by_check(r: subprocess.CompletedProcess) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in json.loads(r.stdout):
        out.setdefault(f["check"], []).append(f)
    return out


def test_a_healthy_site(site: dict) -> None:
    r = doctor(site, "--key-file", str(site["key"]), "--unit", str(UNIT))
    found = by_check(r)
    assert r.returncode == 0, r.stdout
    assert [f["status"] for f in found["model"]] == ["ok", "ok"]
    assert "plain: 0.00 GiB weights" in found["model"][0]["detail"]
    assert "sealed: KV cache not estimated" in found["model"][1]["detail"]
    assert found["memory"][0]["status"] == "ok"
    assert found["key"][0]["status"] == "ok" and "opens the store" in found["key"][0]["detail"]
    assert found["store"][0]["detail"] == "1 sealed objects, all present"
    if have_tool("systemd-analyze"):
        unit = found["unit"][0]
        assert unit["status"] == "ok" and "GPU access kept" in unit["detail"]
    # every finding is one line with a fix where it is not fine
    text = subprocess.run([sys.executable, "-m", "runtime.cli.main", "doctor", "--state-dir",
                           str(site["state"])], capture_output=True, text=True, check=False)
    assert all(line[:4] in ("ok  ", "warn", "FAIL", "skip") for line in text.stdout.splitlines())


def test_wrong_key(site: dict, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    create_key_file(str(other))
    r = doctor(site, "--key-file", str(other))
    assert r.returncode == ExitCode.CHECKS_FAILED
    assert by_check(r)["key"][0]["status"] == "FAIL"
    # the attempt is recorded, and the next run says so
    again = by_check(doctor(site))
    assert again["keyring"][0]["status"] == "warn"
    assert "1 failed unlock attempts" in again["keyring"][0]["detail"]


def test_open_state_directory(site: dict) -> None:
    os.chmod(site["state"], 0o755)
    r = doctor(site)
    state = by_check(r)["state"][0]
    assert r.returncode == ExitCode.CHECKS_FAILED and state["status"] == "FAIL"
    assert state["fix"] == f"chmod 0700 {site['state']}"


def test_lost_object_and_unimported_model(site: dict) -> None:
    for f in (site["state"] / "objects").iterdir():
        f.unlink()
    site["config"].write_text(site["config"].read_text() + "\n[models.never-imported]\n"
                              "store = true\n")
    r = doctor(site, "--key-file", str(site["key"]))
    found = by_check(r)
    assert r.returncode == ExitCode.CHECKS_FAILED
    details = [f["detail"] for f in found["store"] + found["model"] if f["status"] == "FAIL"]
    assert any("1 of 1 objects have no file" in d for d in details)
    assert any("never-imported" in d for d in details)


def test_not_enough_memory_for_the_configured_models(tiny_model: Path, tmp_path: Path) -> None:
    m = ModelConfig(name="big", path=str(tiny_model), n_ctx=1 << 24)
    per_model = sum(model_bytes(m, tmp_path)[:2])
    count = mem_available() // per_model + 2
    models = [ModelConfig(name=f"m{i}", path=str(tiny_model), n_ctx=1 << 24)
              for i in range(count)]
    findings = list(run_checks(DoctorInput(Config(), models, tmp_path / "none", None, None)))
    memory = next(f for f in findings if f.check == "memory")
    assert memory.status is Status.FAIL and "lower n_ctx" in memory.fix


@pytest.mark.usefixtures("systemd_analyze")
def test_a_weak_unit_fails(tmp_path: Path) -> None:
    unit = tmp_path / "hearth.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nPrivateDevices=yes\n")
    findings = list(run_checks(DoctorInput(Config(), [], tmp_path, None, unit)))
    rated = next(f for f in findings if f.check == "unit")
    assert rated.status is Status.FAIL and "exposure" in rated.detail


def test_a_bad_config_is_a_failed_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 5\n")
    r = subprocess.run([sys.executable, "-m", "runtime.cli.main", "doctor", "--config", str(bad),
                        "--state-dir", str(tmp_path / "s")], capture_output=True, text=True,
                       check=False)
    assert r.returncode == ExitCode.CHECKS_FAILED
    assert r.stdout.startswith("FAIL  config") and "server.listen" in r.stdout


def test_finding_lines() -> None:
    assert Finding("gpu", Status.OK, "fine", "unused").line() == "ok    gpu        fine"
    assert Finding("unit", Status.FAIL, "bad", "fix it").line().endswith("bad  -> fix it")
