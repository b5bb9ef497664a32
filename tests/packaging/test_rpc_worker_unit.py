"""packaging/systemd/hearth-rpc-worker.service: exposure, and what keeps the
worker on its private link."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.test_systemd_unit import exposure

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "hearth-rpc-worker.service"
DOCS = UNIT.parents[2] / "docs" / "scale-out.md"
needs_analyze = pytest.mark.usefixtures("systemd_analyze")


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@needs_analyze
def test_exposure_is_at_most_2_and_matches_the_docs() -> None:
    """Fails when a hardening line is dropped (the score rises) or the docs
    quote another score."""
    score = exposure(UNIT)
    assert score <= 2.0
    assert f"exposure {score}" in DOCS.read_text()


@needs_analyze
def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/hearth/venv/bin/hearth", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_worker_stays_on_its_private_link() -> None:
    """The listen address comes from the site's env file and is declared
    private; only the tunnel interface, one peer and one port are allowed.
    Fails if any of these lines goes."""
    d = directives()
    assert "--private-link" in d["ExecStart"][0] and "${HEARTH_RPC_LISTEN}" in d["ExecStart"][0]
    assert d["IPAddressDeny"] == ["any"] and d["SocketBindDeny"] == ["any"]
    assert d["RestrictNetworkInterfaces"] == ["lo wg-hearth"]
    assert d["RestrictAddressFamilies"] == ["AF_INET"]
    assert any("wg" in v for v in d["BindsTo"])
    assert d["DynamicUser"] == ["yes"] and d["LimitCORE"] == ["0"]
    assert "PrivateDevices" not in d and d["DevicePolicy"] == ["closed"]
