"""packaging/install.sh's own bundle checks (openssl + coreutils, before any
Python of the bundle runs): the same refusals as runtime/bundle/manifest.py."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.bundle.manifest import MANIFEST, SIGNATURE
from tests.bundle.helpers import signed_tree, tar_of, truncated

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
