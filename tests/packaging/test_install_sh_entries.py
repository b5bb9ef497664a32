"""packaging/install.sh and SECURITY-CASES 32: nothing unsigned in a bundle
(not even an empty folder) and no package source but its wheelhouse.

Both tests fail on e3a5e70 (checked by running them against that commit's
install.sh: the bundle with an empty folder verified, and pip saw the
inherited PIP_FIND_LINKS and no --isolated)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.bundle.manifest import write_manifest
from tests.bundle.helpers import signed_tree, tar_of

INSTALL = Path(__file__).resolve().parents[2] / "packaging" / "install.sh"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")


@pytest.mark.parametrize("folder", ["empty", "wheelhouse/extra", "models/a/b"])
def test_an_unsigned_folder_is_refused(tmp_path: Path, folder: str) -> None:
    key = Ed25519PrivateKey.generate()
    root, fp = signed_tree(tmp_path / "t", key)
    (root / folder).mkdir(parents=True)
    r = subprocess.run([str(INSTALL), "--offline", str(tar_of(root, tmp_path / "b.tar")),
                        "--fingerprint", fp, "--verify-only"],
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 1 and "folders differ from the MANIFEST" in r.stderr, r.stderr
    assert folder in r.stderr


FAKE_PYTHON = """#!/bin/sh
# stands in for the venv's python: records how pip was called
{ echo "ARGS $*"; env | grep '^PIP_' | sort; } >> "$0.calls"
"""


def test_pip_ignores_every_inherited_setting(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    root, _ = signed_tree(tmp_path / "t", key)
    info = json.loads((root / "BUNDLE.json").read_text())
    info["python"] = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    (root / "BUNDLE.json").write_text(json.dumps(info))
    (root / "packaging").mkdir()
    (root / "packaging" / "hearth.toml").write_text("")
    fp = write_manifest(root, key)
    bundle = tar_of(root, tmp_path / "b.tar")
    venv = tmp_path / "opt" / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(FAKE_PYTHON)
    (venv / "hearth").write_text("#!/bin/sh\necho hearth 0.1.0\n")
    for tool in ("python", "hearth"):
        (venv / tool).chmod(0o755)
    env = {**os.environ, "PIP_FIND_LINKS": str(tmp_path / "evil"),
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "x",
           "PIP_CONFIG_FILE": str(tmp_path / "evil.conf"), "PIP_TRUSTED_HOST": "127.0.0.1"}
    r = subprocess.run([str(INSTALL), "--offline", str(bundle), "--fingerprint", fp,
                        "--no-service", "--prefix", str(tmp_path / "opt"),
                        "--python", sys.executable],
                       capture_output=True, text=True, check=False, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    calls = (venv / "python.calls").read_text().splitlines()
    assert calls[0].startswith("ARGS -m pip --isolated install --no-index --find-links ")
    assert sorted(calls[1:]) == ["PIP_CONFIG_FILE=/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK=1",
                                 "PIP_NO_INDEX=1"]
