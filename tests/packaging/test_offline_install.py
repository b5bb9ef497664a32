"""The offline bundle end to end: build it here (the connected build machine),
then, inside a network namespace with no network at all, verify and install
it into a fresh venv, serve the model from that venv and get a generation."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.bundle.build import BundleBuilder, BundleSpec
from runtime.bundle.manifest import create_signing_key
from tests.conftest import host_tool_missing

ROOT = Path(__file__).resolve().parents[2]

INSIDE = r"""
set -euo pipefail
# the namespace has only a loopback interface, and it is down
ifaces=$(awk -F: 'NR > 2 { gsub(/ /, "", $1); print $1 }' /proc/net/dev)
[ "$ifaces" = lo ] || { echo "network interfaces: $ifaces"; exit 97; }
if "$PY" -c 'import socket; socket.create_connection(("10.0.0.1", 443), timeout=2)' 2>/dev/null
then echo "network reachable"; exit 98; fi
cd "$WORK"
tar -xOf "$BUNDLE" --wildcards '*/packaging/install.sh' > install.sh
bash install.sh --offline "$BUNDLE" --fingerprint "$FP" --prefix "$WORK/opt" --python "$PY" \
    --no-service
H="$WORK/opt/venv/bin/hearth"
"$WORK/opt/venv/bin/python" -c 'import runtime, llama_cpp; print(runtime.__file__)'
"$H" serve --model tiny="$WORK/opt/models/tiny.gguf" --listen "unix:$WORK/h.sock" \
    --ready-file "$WORK/ready.json" > "$WORK/serve.log" 2>&1 &
pid=$!
for _ in $(seq 300); do [ -f "$WORK/ready.json" ] && break; sleep 0.1; done
[ -f "$WORK/ready.json" ] || { cat "$WORK/serve.log"; exit 96; }
echo "GENERATION: $("$H" generate --addr "unix:$WORK/h.sock" --max-tokens 16 --temperature 0 \
    'the patient')"
kill -TERM "$pid"
wait "$pid"
echo "SERVE EXIT: $?"
"""


def netns_prefix() -> list[str] | None:
    """unshare -n as root, or inside a new user namespace otherwise."""
    if shutil.which("unshare") is None:
        return None
    for cmd in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*cmd, "true"], capture_output=True, check=False).returncode == 0:
            return cmd
    return None


@pytest.mark.slow
def test_bundle_installs_and_serves_with_the_network_cut_off(tiny_model: Path,
                                                             tmp_path: Path) -> None:
    netns = netns_prefix()
    if netns is None:
        host_tool_missing("no network namespace can be created here (unshare -n / -rn, "
                          "util-linux)")
    key = tmp_path / "signing.pem"
    create_signing_key(key)
    built = BundleBuilder(BundleSpec(out=tmp_path / "dist", source=ROOT, signing_key=key,
                                     models=[("tiny", tiny_model)], log=lambda _: None)).build()
    work = tmp_path / "site"
    work.mkdir()
    base_python = os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}."
                                                       f"{sys.version_info[1]}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_FIND_LINKS", "PIP_INDEX_URL")}
    env.update(WORK=str(work), BUNDLE=str(built.path), FP=built.fingerprint, PY=base_python,
               PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    r = subprocess.run([*netns, "bash", "-c", INSIDE], cwd=work, env=env, capture_output=True,
                       text=True, check=False, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"bundle verified: signed by {built.fingerprint}" in out
    assert f"{work}/opt/venv/lib/" in r.stdout           # imported from the new venv
    generation = next(line for line in r.stdout.splitlines() if line.startswith("GENERATION:"))
    assert len(generation) > len("GENERATION: ")
    assert "SERVE EXIT: 0" in r.stdout
