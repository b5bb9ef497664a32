"""packaging/install.sh's own bundle checks (openssl + coreutils, before any
Python of the bundle runs): the same refusals as runtime/bundle/manifest.py."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.bundle.manifest import MANIFEST, SIGNATURE
from tests.bundle.helpers import signed_tree, tar_of, truncated
from tests.conftest import require_tool

INSTALL = Path(__file__).resolve().parents[2] / "packaging" / "install.sh"
pytestmark = pytest.mark.usefixtures("openssl")       # tests/conftest.py: fails in CI


def verify(bundle: Path, *fingerprints: str) -> subprocess.CompletedProcess:
    args = [str(INSTALL), "--offline", str(bundle), "--verify-only"]
    for fp in fingerprints:
        args += ["--fingerprint", fp]
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_good_bundle(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root, fp = signed_tree(tmp_path / "t", key)
    r = verify(tar_of(root, tmp_path / "b.tar"), fp)
    assert r.returncode == 0, r.stderr
    assert f"bundle verified: signed by {fp}, 3 files" in r.stderr
    # a fingerprint as printed with colons and capitals is the same one
    colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
    assert verify(tmp_path / "b.tar", "00" * 32, colons).returncode == 0


def test_without_a_fingerprint_it_shows_the_key_and_stops(tmp_path: Path,
                                                          key: Ed25519PrivateKey) -> None:
    root, fp = signed_tree(tmp_path / "t", key)
    r = verify(tar_of(root, tmp_path / "b.tar"))
    assert r.returncode == 1 and f"signed by key {fp}" in r.stderr


def test_untrusted_key(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root, _ = signed_tree(tmp_path / "t", key)
    r = verify(tar_of(root, tmp_path / "b.tar"), "ab" * 32)
    assert r.returncode == 1 and "not a --fingerprint you trust" in r.stderr


def _sign_manifest(root: Path, key: Ed25519PrivateKey, text: str) -> None:
    (root / MANIFEST).write_text(text)
    (root / SIGNATURE).write_bytes(key.sign(text.encode()))


@pytest.mark.parametrize("tamper,message", [
    ("content", "does not match its SHA-256"),
    ("extra", "files differ from the MANIFEST"),
    ("missing", "files differ from the MANIFEST"),
    ("signature", "signature does not verify"),
    ("manifest", "signature does not verify"),
    ("signed-dotdot", "unsafe path"),
    ("signed-malformed", "malformed MANIFEST line"),
])
def test_tampered_bundles_are_refused(tmp_path: Path, key: Ed25519PrivateKey, tamper: str,
                                      message: str) -> None:
    root, fp = signed_tree(tmp_path / "t", key)
    whl = root / "wheelhouse" / "a-1.0-py3-none-any.whl"
    if tamper == "content":
        whl.write_bytes(whl.read_bytes().replace(b"wheel", b"whee!", 1))
    elif tamper == "extra":
        (root / "wheelhouse" / "evil-1.0-py3-none-any.whl").write_bytes(b"x")
    elif tamper == "missing":
        whl.unlink()
    elif tamper == "signature":
        sig = bytearray((root / SIGNATURE).read_bytes())
        sig[10] ^= 0x40
        (root / SIGNATURE).write_bytes(bytes(sig))
    elif tamper == "manifest":
        (root / MANIFEST).write_text((root / MANIFEST).read_text().replace("m.gguf", "n.gguf"))
    elif tamper == "signed-dotdot":
        # a validly signed manifest that points outside the bundle
        digest = hashlib.sha256(b"x").hexdigest()
        _sign_manifest(root, key, (root / MANIFEST).read_text() + f"{digest}  models/../../x\n")
    else:
        _sign_manifest(root, key, (root / MANIFEST).read_text() + "not a manifest line\n")
    r = verify(tar_of(root, tmp_path / "b.tar"), fp)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr


@pytest.mark.parametrize("entry", ["symlink", "dotdot", "outside"])
def test_hostile_archives_are_not_unpacked(tmp_path: Path, key: Ed25519PrivateKey,
                                           entry: str) -> None:
    root, fp = signed_tree(tmp_path / "t", key)
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        tar.add(root, arcname=root.name)
        if entry == "symlink":
            info = tarfile.TarInfo(f"{root.name}/models/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            tar.addfile(info)
        else:
            name = f"{root.name}/../escape" if entry == "dotdot" else "escape"
            info = tarfile.TarInfo(name)
            with open(os.devnull, "rb") as f:
                tar.addfile(info, f)
    r = verify(bad, fp)
    assert r.returncode == 1 and "refusing to unpack it" in r.stderr
    assert not (tmp_path / "escape").exists()


def test_options_are_checked() -> None:
    r = subprocess.run([str(INSTALL), "--bogus"], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "unknown option --bogus" in r.stderr
    r = subprocess.run([str(INSTALL), "--verify-only"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 1 and "needs --offline" in r.stderr
    r = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "--fingerprint HEX" in r.stdout


@pytest.mark.skipif(os.path.isdir("/run/systemd/system") and os.geteuid() == 0,
                    reason="would install a real service on this machine")
def test_service_mode_refuses_before_touching_the_system(tmp_path: Path) -> None:
    r = subprocess.run([str(INSTALL), "--prefix", str(tmp_path / "opt")], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1
    assert ("systemd is not running" in r.stderr) or ("needs root" in r.stderr)
    assert not (tmp_path / "opt").exists()


def test_truncated_bundle(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root, fp = signed_tree(tmp_path / "t", key)
    bundle = truncated(root, tmp_path / "b.tar")
    r = verify(bundle, fp)
    assert r.returncode == 1
    assert "not a readable tar archive" in r.stderr or "files differ" in r.stderr


def test_a_replayed_older_bundle_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    prefix = tmp_path / "opt"
    (prefix / "share").mkdir(parents=True)
    newer, _ = signed_tree(tmp_path / "new", key, created="2026-12-01T00:00:00Z")
    shutil.copyfile(newer / "BUNDLE.json", prefix / "share" / "BUNDLE.json")   # installed
    old_root, fp = signed_tree(tmp_path / "old", key, created="2026-11-01T00:00:00Z")
    old = tar_of(old_root, tmp_path / "old.tar")
    args = [str(INSTALL), "--offline", str(old), "--fingerprint", fp, "--verify-only",
            "--prefix", str(prefix)]
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert "older than the installed one (built 2026-12-01T00:00:00Z)" in r.stderr
    r = subprocess.run([*args, "--allow-downgrade"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "rolling back" in r.stderr
    # the same or a newer bundle goes ahead
    same = tar_of(newer, tmp_path / "same.tar")
    r = subprocess.run([*args[:2], str(same), *args[3:]], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr


# ---- service mode, in a mount namespace with a fake systemctl --------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$CALLS"
"""
# "Sealing" that a test can undo: the key, base64'd behind a marker.
FAKE_SYSTEMD_CREDS = """#!/bin/sh
echo "systemd-creds $*" >> "$CALLS"
case "$1" in
    encrypt) { echo FAKE-SEALED; base64 -w0 "$3"; } > "$4" ;;
    decrypt) tail -n1 "$3" | base64 -d > "$4" ;;
    *) exit 1 ;;
esac
"""
# The venv's python and pip: pip is recorded, not run (the wheelhouse is
# a stand-in); everything else is the test's own Python with this checkout.
FAKE_VENV_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> "$CALLS"; exit 0; fi
PYTHONPATH={repo} exec {python} "$@"
"""
FAKE_VENV_PIP = """#!/bin/sh
echo "pip $*" >> "$CALLS"
"""
FAKE_HEARTH = """#!/bin/sh
PYTHONPATH={repo} exec {python} -m runtime.cli.main "$@"
"""
# Inside the namespace: a private copy of /etc and /var/lib, an empty /run
# that says systemd runs; then install.sh, run as it would be on a site.
NAMESPACE = """set -eu
cp -a /etc "$ROOT/etc"
mount --bind "$ROOT/etc" /etc
mount --bind "$ROOT/varlib" /var/lib
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
export PATH="$FAKES:$PATH"
"$INSTALL" "$@"
"""


def service_install(root: Path, bundle: Path, fp: str, prefix: Path, *extra: str
                    ) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", NAMESPACE, "ns",
         "--offline", str(bundle), "--fingerprint", fp, "--prefix", str(prefix),
         "--python", sys.executable, *extra],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "ROOT": str(root), "FAKES": str(root / "fakes"),
             "CALLS": str(root / "calls"), "INSTALL": str(INSTALL)})


def write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_service_mode_user_sealed_key_import_doctor_and_enable(
        tmp_path: Path, key: Ed25519PrivateKey, tiny_model: Path) -> None:
    """install.sh as a site's root runs it, in a mount namespace with a
    private /etc, /var/lib and /run, and a systemctl and systemd-creds that
    record their calls: it creates the hearth user, makes a master key,
    seals it with systemd-creds (and writes the backup asked for), imports
    the bundle's model into the sealed store, installs the config and the
    unit, runs the doctor, reloads systemd and enables (does not start) the
    service.  A second run keeps the key (unsealing it) and the config.
    Checked that it can fail: with install_service's `systemctl enable`
    line removed the recorded calls differ; with the import loop removed
    the store holds no model."""
    require_tool("unshare")
    require_tool("useradd")
    from runtime.bundle.manifest import write_manifest
    from runtime.storage.keys import key_from_file
    from runtime.storage.store import SealedStore

    repo = INSTALL.parents[1]
    top = tmp_path / "tree" / "hearth-bundle-0.1.0-cpu-test"
    (top / "wheelhouse").mkdir(parents=True)
    (top / "wheelhouse" / "hearth-0.1.0-py3-none-any.whl").write_bytes(b"stand-in")
    (top / "models").mkdir()
    shutil.copyfile(tiny_model, top / "models" / "tiny.gguf")
    (top / "packaging").mkdir()
    shutil.copyfile(repo / "packaging" / "systemd" / "hearth.service",
                    top / "packaging" / "hearth.service")
    shutil.copyfile(repo / "packaging" / "systemd" / "hearth-coordinator.service",
                    top / "packaging" / "hearth-coordinator.service")
    shutil.copyfile(repo / "packaging" / "hearth.example.toml",
                    top / "packaging" / "hearth.toml")
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    (top / "BUNDLE.json").write_text(json.dumps({
        "format": "hearth-bundle-v1", "hearth_version": "0.1.0", "flavour": "cpu",
        "python": tag, "platform": "linux-x86_64", "models": ["tiny"],
        "created": "2026-12-01T00:00:00Z"}))
    fp = write_manifest(top, key)
    bundle = tar_of(top, tmp_path / "bundle.tar")

    root = tmp_path / "site"
    (root / "varlib").mkdir(parents=True)
    (root / "fakes").mkdir()
    write_script(root / "fakes" / "systemctl", FAKE_SYSTEMCTL)
    write_script(root / "fakes" / "systemd-creds", FAKE_SYSTEMD_CREDS)
    prefix = root / "opt"
    (prefix / "venv" / "bin").mkdir(parents=True)
    for name, text in (("python", FAKE_VENV_PYTHON), ("pip", FAKE_VENV_PIP),
                       ("hearth", FAKE_HEARTH)):
        write_script(prefix / "venv" / "bin" / name,
                     text.format(repo=repo, python=sys.executable))
    backup = root / "backup.key"

    r = service_install(root, bundle, fp, prefix, "--key-backup", str(backup))
    assert r.returncode == 0, r.stderr
    calls = (root / "calls").read_text().splitlines()
    assert [c for c in calls if c.startswith("systemctl")] == [
        "systemctl daemon-reload", "systemctl enable hearth.service"]
    (seal,) = [c for c in calls if c.startswith("systemd-creds")]
    assert seal.startswith("systemd-creds encrypt --name=hearth-master ")
    assert seal.endswith(" /etc/hearth/hearth-master.cred")
    assert any(c.startswith("pip ") and "--no-index" in c and "hearth==0.1.0" in c
               for c in calls)

    etc, state = root / "etc", root / "varlib" / "hearth"
    user = next(line.split(":") for line in (etc / "passwd").read_text().splitlines()
                if line.startswith("hearth:"))
    assert user[5:] == ["/var/lib/hearth", "/usr/sbin/nologin"]
    uid, gid = int(user[2]), int(user[3])
    assert uid < 1000                                           # a system user
    assert (state.stat().st_uid, state.stat().st_gid) == (uid, gid)
    assert state.stat().st_mode & 0o777 == 0o700
    sealed = (etc / "hearth" / "hearth-master.cred").read_text().splitlines()
    assert sealed[0] == "FAKE-SEALED"
    assert base64.b64decode(sealed[1]) == backup.read_bytes()
    assert backup.stat().st_mode & 0o777 == 0o400
    assert not (etc / "hearth" / "hearth-master.key").exists()   # sealed, not kept plain
    store = SealedStore.open(state, key_from_file(str(backup)))
    try:
        assert [(o.kind, o.name) for o in store.list()] == [("model", "tiny")]
    finally:
        store.close()
    config = etc / "hearth" / "hearth.toml"
    assert config.stat().st_mode & 0o777 == 0o640 and config.stat().st_gid == gid
    unit = (etc / "systemd" / "system" / "hearth.service").read_text()
    assert f"{prefix}/venv/bin/hearth" in unit and "/opt/hearth" not in unit
    assert "ok    core" in r.stderr                               # the doctor ran
    assert "enabled hearth.service; start it with: systemctl start hearth" in r.stderr
    # the coordinator's unit: installed with this prefix, not enabled (the
    # systemctl calls above enable hearth.service only)
    coordinator = (etc / "systemd" / "system" / "hearth-coordinator.service").read_text()
    assert f"{prefix}/venv/bin/hearth fed coordinator --serve" in coordinator
    assert "/opt/hearth" not in coordinator

    # Again (an upgrade): the key is unsealed and kept, the config kept.
    config.write_text(config.read_text() + "\n# edited by the site\n")
    (root / "calls").unlink()
    again = service_install(root, bundle, fp, prefix)
    assert again.returncode == 0, again.stderr
    assert "keeping the existing master key" in again.stderr
    assert "keeping /etc/hearth/hearth.toml" in again.stderr
    assert config.read_text().endswith("# edited by the site\n")
    calls = (root / "calls").read_text().splitlines()
    assert [c for c in calls if c.startswith("systemd-creds")] == [
        "systemd-creds decrypt --name=hearth-master /etc/hearth/hearth-master.cred "
        + next(c for c in calls if c.startswith("systemd-creds")).split()[-1]]
    store = SealedStore.open(state, key_from_file(str(backup)))
    try:
        assert {o.name for o in store.list()} == {"tiny"}     # (imported again: v2)
    finally:
        store.close()
