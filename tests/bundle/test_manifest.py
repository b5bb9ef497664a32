"""The signed manifest: what verifies, and every way a bundle is refused."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.bundle.build import unpack
from runtime.bundle.manifest import (
    MANIFEST,
    SIGNATURE,
    create_signing_key,
    load_signing_key,
    parse_manifest,
    verify_bundle,
)
from runtime.errors import ConfigError, IntegrityError
from tests.bundle.helpers import signed_tree, tar_of, truncated


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_tree_verifies(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root, fp = signed_tree(tmp_path, key)
    entries = verify_bundle(root, [fp])
    assert set(entries) == {"BUNDLE.json", "models/m.gguf", "wheelhouse/a-1.0-py3-none-any.whl"}
    assert (root / MANIFEST).read_text().splitlines()[0].endswith("  BUNDLE.json")  # sorted
    assert verify_bundle(root, [fp.upper()[:10] + fp[10:]])        # case does not matter


def test_no_trusted_fingerprint_is_a_config_error(tmp_path: Path, key: Ed25519PrivateKey
                                                  ) -> None:
    root, _ = signed_tree(tmp_path, key)
    with pytest.raises(ConfigError, match="fingerprint"):
        verify_bundle(root, [])


def test_another_key_is_not_trusted(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """Re-signing a tampered bundle with one's own key does not help."""
    root, fp = signed_tree(tmp_path, key)
    (root / "models" / "m.gguf").write_bytes(b"evil")
    from runtime.bundle.manifest import write_manifest

    other = write_manifest(root, Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError, match="not trusted"):
        verify_bundle(root, [fp])
    assert verify_bundle(root, [other])


@pytest.mark.parametrize("tamper", ["content", "extra", "missing", "signature", "manifest"])
def test_tampering_is_caught(tmp_path: Path, key: Ed25519PrivateKey, tamper: str) -> None:
    root, fp = signed_tree(tmp_path, key)
    if tamper == "content":
        with (root / "wheelhouse" / "a-1.0-py3-none-any.whl").open("r+b") as f:
            f.seek(5)
            f.write(b"X")
        match = "does not match its SHA-256"
    elif tamper == "extra":
        (root / "wheelhouse" / "evil-1.0-py3-none-any.whl").write_bytes(b"x")
        match = "not in the manifest"
    elif tamper == "missing":
        (root / "models" / "m.gguf").unlink()
        match = "files missing"
    elif tamper == "signature":
        sig = bytearray((root / SIGNATURE).read_bytes())
        sig[0] ^= 1
        (root / SIGNATURE).write_bytes(bytes(sig))
        match = "signature does not verify"
    else:
        text = (root / MANIFEST).read_text().replace("models/m.gguf", "models/n.gguf")
        (root / MANIFEST).write_text(text)
        match = "signature does not verify"
    with pytest.raises(IntegrityError, match=match):
        verify_bundle(root, [fp])


def test_a_symlink_in_the_tree_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root, fp = signed_tree(tmp_path, key)
    os.symlink("/etc/passwd", root / "models" / "link")
    with pytest.raises(IntegrityError, match="not a plain file"):
        verify_bundle(root, [fp])


@pytest.mark.parametrize("line", [
    "zz  a", "0" * 64 + " one-space", "0" * 64 + "  /abs", "0" * 64 + "  a/../b",
    "0" * 64 + "  ./a", "0" * 64 + "  a//b", "0" * 64 + "  MANIFEST",
])
def test_malformed_manifest_lines(line: str) -> None:
    with pytest.raises(IntegrityError):
        parse_manifest((line + "\n").encode())


def test_duplicate_and_empty_manifests() -> None:
    line = "0" * 64 + "  a\n"
    with pytest.raises(IntegrityError, match="twice"):
        parse_manifest((line * 2).encode())
    with pytest.raises(IntegrityError, match="empty"):
        parse_manifest(b"")


def test_unpack_refuses_links_and_escapes(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root, _ = signed_tree(tmp_path / "t", key)
    good = tar_of(root, tmp_path / "good.tar")
    assert unpack(good, tmp_path / "out").name == root.name
    for entry in ("link", "dotdot", "two-tops"):
        bad = tmp_path / f"{entry}.tar"
        with tarfile.open(bad, "w") as tar:
            tar.add(root, arcname=root.name)
            info = tarfile.TarInfo(f"{root.name}/models/x")
            if entry == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
                tar.addfile(info)
            else:
                info.name = f"{root.name}/../escape" if entry == "dotdot" else "other/file"
                tar.addfile(info, io.BytesIO())
        with pytest.raises((IntegrityError, ConfigError)):
            unpack(bad, tmp_path / f"out-{entry}")
        assert not (tmp_path / "escape").exists()


def test_not_a_tar(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ConfigError, match="not a readable tar"):
        unpack(junk, tmp_path / "out")


def test_signing_keys_are_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    create_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(path)
    with pytest.raises(FileExistsError):
        create_signing_key(path)
    path.write_text("garbage")
    with pytest.raises(ConfigError, match="PEM"):
        load_signing_key(path)


def test_a_truncated_bundle_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root, fp = signed_tree(tmp_path / "t", key)
    bundle = truncated(root, tmp_path / "b.tar")
    with pytest.raises((ConfigError, IntegrityError)):
        verify_bundle(unpack(bundle, tmp_path / "out"), [fp])


@pytest.mark.parametrize("folder", ["empty", "wheelhouse/extra", "models/a/b"])
def test_an_unsigned_folder_is_refused(tmp_path: Path, key: Ed25519PrivateKey,
                                       folder: str) -> None:
    """SECURITY-CASES 32: a folder that holds no listed file is not covered
    by the signature.  Fails on e3a5e70 (checked: verify_bundle accepted the
    tree with an empty folder added)."""
    root, fp = signed_tree(tmp_path, key)
    (root / folder).mkdir(parents=True)
    with pytest.raises(IntegrityError, match="folders not in the manifest"):
        verify_bundle(root, [fp])
