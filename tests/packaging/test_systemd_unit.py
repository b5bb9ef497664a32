"""packaging/systemd/hearth.service: its exposure score and what it must keep."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from runtime.exit_codes import ExitCode

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "hearth.service"
README = UNIT.parents[2] / "README.md"
needs_analyze = pytest.mark.usefixtures("systemd_analyze")   # fails in CI if missing


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def exposure(unit: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True, check=False).stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert m, out
    return float(m.group(1))


@needs_analyze
def test_exposure_is_at_most_2_and_matches_the_readme() -> None:
    score = exposure(UNIT)
    assert score <= 2.0
    assert f"exposure {score}" in README.read_text()


@needs_analyze
def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    unit = tmp_path / "hearth.service"
    # verify insists that ExecStart exists; point it at a binary that does
    unit.write_text(UNIT.read_text().replace("/opt/hearth/venv/bin/hearth", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_gpu_access_is_kept() -> None:
    d = directives()
    assert "PrivateDevices" not in d          # it would hide /dev/nvidia*
    assert d["DevicePolicy"] == ["closed"]
    assert any(v.startswith("char-nvidia") for v in d["DeviceAllow"])


def test_service_contract() -> None:
    d = directives()
    assert d["Type"] == ["notify"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["UMask"] == ["0077"] and d["LimitCORE"] == ["0"]
    assert d["LoadCredentialEncrypted"][0].startswith("hearth-master:")
    assert "--credential hearth-master" in d["ExecStart"][0]
    assert d["StateDirectory"] == ["hearth"] and d["RuntimeDirectory"] == ["hearth"]
    for key in ("ProtectSystem", "PrivateTmp", "NoNewPrivileges", "RestrictAddressFamilies",
                "SystemCallFilter"):
        assert key in d
    prevent = {int(x) for x in d["RestartPreventExitStatus"][0].split()}
    assert prevent == {ExitCode.CONFIG, ExitCode.MODEL_LOAD, ExitCode.WRONG_KEY,
                       ExitCode.INTEGRITY}      # SECURITY-CASES 26: no crash loop
