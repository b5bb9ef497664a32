"""packaging/systemd/hearth-coordinator.service: hardened like the daemon's
unit (its exposure no higher), and what the coordinator service needs."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtime.exit_codes import ExitCode
from tests.packaging.test_systemd_unit import UNIT as DAEMON_UNIT
from tests.packaging.test_systemd_unit import exposure

UNIT = DAEMON_UNIT.parent / "hearth-coordinator.service"
DOCS = UNIT.parents[2] / "docs" / "federation.md"
needs_analyze = pytest.mark.usefixtures("systemd_analyze")


def directives(unit: Path = UNIT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@needs_analyze
def test_exposure_is_no_higher_than_the_daemons_and_matches_the_docs() -> None:
    """Fails when a hardening line is dropped (the score rises above the
    daemon unit's) or the docs quote another score."""
    score = exposure(UNIT)
    assert score <= exposure(DAEMON_UNIT) and score <= 2.0
    assert f"exposure {score}" in DOCS.read_text()


@needs_analyze
def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/hearth/venv/bin/hearth", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_every_hardening_line_of_the_daemon_unit_is_kept() -> None:
    """The daemon's hardening, line for line, except what gives it the GPU
    (this unit hides devices altogether).  Fails if one is dropped or
    weakened here."""
    mine, daemon = directives(), directives(DAEMON_UNIT)
    gpu_only = {"DeviceAllow", "LimitMEMLOCK", "SocketBindAllow"}
    for key in ("NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities",
                "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateUsers",
                "ProtectHostname", "ProtectClock", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "ProtectProc", "ProcSubset", "RestrictNamespaces", "RestrictRealtime",
                "RestrictSUIDSGID", "LockPersonality", "RemoveIPC", "KeyringMode",
                "RestrictAddressFamilies", "IPAddressDeny", "IPAddressAllow", "SocketBindDeny",
                "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
                "DevicePolicy", "UMask", "LimitCORE"):
        assert key not in gpu_only and mine.get(key) == daemon[key], key
    assert mine["PrivateDevices"] == ["yes"]


def test_service_contract() -> None:
    d = directives()
    start = d["ExecStart"][0]
    assert "fed coordinator --serve" in start and "--config /etc/hearth/coordinator.toml" in start
    assert "--credential hearth-coordinator-master" in start
    assert d["LoadCredentialEncrypted"][0].startswith("hearth-coordinator-master:")
    # its own sealed store, not the daemon's
    assert d["StateDirectory"] == ["hearth-coordinator"]
    assert "--state-dir /var/lib/hearth-coordinator" in start
    assert d["SocketBindAllow"] == ["tcp:7443"]
    prevent = {int(x) for x in d["RestartPreventExitStatus"][0].split()}
    assert prevent == {ExitCode.CONFIG, ExitCode.WRONG_KEY, ExitCode.INTEGRITY}
