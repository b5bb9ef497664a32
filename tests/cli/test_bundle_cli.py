"""`hearth bundle keygen|verify` as an operator runs them."""
from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.exit_codes import ExitCode
from tests.bundle.helpers import signed_tree, tar_of
from tests.cli.test_cli import hearth


def test_keygen_prints_the_fingerprint_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "signing.pem"
    r = hearth("bundle", "keygen", str(key))
    assert r.returncode == 0
    fp = r.stdout.strip()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert key.stat().st_mode & 0o777 == 0o600
    again = hearth("bundle", "keygen", str(key))
    assert again.returncode == ExitCode.CONFIG and "not overwriting" in again.stderr


def test_verify_names_the_signer_and_the_contents(tmp_path: Path) -> None:
    root, fp = signed_tree(tmp_path / "t", Ed25519PrivateKey.generate())
    bundle = tar_of(root, tmp_path / "b.tar")
    ok = hearth("bundle", "verify", str(bundle), "--fingerprint", fp)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: hearth 0.1.0 (cpu, cp311") and "models: m" in ok.stdout
    bad = hearth("bundle", "verify", str(bundle), "--fingerprint", "cd" * 32)
    assert bad.returncode == ExitCode.INTEGRITY and f"signed by key {fp}" in bad.stderr
    missing = hearth("bundle", "verify", str(tmp_path / "nope.tar"), "--fingerprint", fp)
    assert missing.returncode == ExitCode.CONFIG and "not a readable tar" in missing.stderr
