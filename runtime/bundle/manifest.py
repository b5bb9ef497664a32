"""The signed manifest of an offline bundle (docs/formats/bundle-v1.md).

MANIFEST is `sha256sum` output ("<hex>  <path>" per line, sorted), so that a
site can check it with coreutils alone; MANIFEST.sig is the raw 64-byte
Ed25519 signature over MANIFEST's bytes, which `openssl pkeyutl -verify
-rawin` checks; signing-key.pem is the public key.  The key proves nothing
by itself: the installer must be told which key to trust (its fingerprint,
the SHA-256 of the key's DER SubjectPublicKeyInfo, is printed at build time
and travels out of band).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import ConfigError, IntegrityError
from runtime.storage.keys import key_fingerprint as fingerprint
from runtime.storage.keys import normal_fingerprint

MANIFEST = "MANIFEST"
SIGNATURE = "MANIFEST.sig"
PUBLIC_KEY = "signing-key.pem"
UNLISTED = frozenset({MANIFEST, SIGNATURE, PUBLIC_KEY})
_LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


def create_signing_key(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 key in a file only its owner can read (never overwrites)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_relative(name: str) -> str:
    """A manifest path: relative, '/'-separated, no '..' or empty parts."""
    p = PurePosixPath(name)
    if (p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts)
            or "\\" in name or name != str(p)):
        raise IntegrityError(f"manifest: unsafe path {name!r}")
    return name


def files_under(root: Path) -> list[str]:
    """Every regular file below root, as sorted relative paths; anything else
    (a link, a device) is refused."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if full.is_symlink() or not (full.is_dir() or full.is_file()):
                raise IntegrityError(f"bundle: {full.relative_to(root)} is not a plain file")
        for name in filenames:
            out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def folders_under(root: Path) -> set[str]:
    """Every folder below root, as relative paths."""
    return {(Path(dirpath) / name).relative_to(root).as_posix()
            for dirpath, dirnames, _ in os.walk(root) for name in dirnames}


def folders_of(names: Iterable[str]) -> set[str]:
    """The folders a list of files needs: every proper prefix of each path."""
    return {"/".join(parts[:i]) for parts in (n.split("/") for n in names)
            for i in range(1, len(parts))}


def write_manifest(root: Path, key: Ed25519PrivateKey) -> str:
    """Hashes every file under root into MANIFEST, signs it, and writes the
    public key; returns the key's fingerprint."""
    names = [n for n in files_under(root) if n not in UNLISTED]
    text = "".join(f"{sha256_file(root / n)}  {check_relative(n)}\n" for n in names)
    data = text.encode()
    (root / MANIFEST).write_bytes(data)
    (root / SIGNATURE).write_bytes(key.sign(data))
    public = key.public_key()
    (root / PUBLIC_KEY).write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return fingerprint(public)


def parse_manifest(data: bytes) -> dict[str, str]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise IntegrityError("manifest: not ASCII") from exc
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = _LINE.match(line)
        if not m:
            raise IntegrityError(f"manifest line {number}: not '<sha256>  <path>'")
        name = check_relative(m.group(2))
        if name in entries or name in UNLISTED:
            raise IntegrityError(f"manifest line {number}: {name} listed twice or reserved")
        entries[name] = m.group(1)
    if not entries:
        raise IntegrityError("manifest: empty")
    return entries


def verify_bundle(root: Path, trusted: Iterable[str]) -> dict[str, str]:
    """Checks a bundle unpacked at root: the signing key is one of the
    trusted fingerprints, the signature covers MANIFEST, every file is listed
    with its hash and nothing else is present (no extra file, no folder that
    holds no listed file).  Returns the entries."""
    trusted = {normal_fingerprint(t) for t in trusted}
    if not trusted:
        raise ConfigError("no trusted signing-key fingerprint given (--fingerprint)")
    try:
        public = serialization.load_pem_public_key((root / PUBLIC_KEY).read_bytes())
        data = (root / MANIFEST).read_bytes()
        signature = (root / SIGNATURE).read_bytes()
    except FileNotFoundError as exc:
        raise IntegrityError(f"bundle: {Path(exc.filename).name} is missing") from exc
    except ValueError as exc:
        raise IntegrityError(f"bundle: {PUBLIC_KEY} is not a PEM public key") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise IntegrityError(f"bundle: {PUBLIC_KEY} is not an Ed25519 key")
    actual = fingerprint(public)
    if not any(hmac.compare_digest(actual, t) for t in trusted):
        raise IntegrityError(f"bundle: signed by key {actual}, which is not trusted")
    try:
        public.verify(signature, data)
    except InvalidSignature as exc:
        raise IntegrityError("bundle: the manifest signature does not verify") from exc
    entries = parse_manifest(data)
    present = {n for n in files_under(root) if n not in UNLISTED}
    extra, missing = present - entries.keys(), entries.keys() - present
    if extra:
        raise IntegrityError(f"bundle: files not in the manifest: {sorted(extra)}")
    if missing:
        raise IntegrityError(f"bundle: files missing: {sorted(missing)}")
    # A folder holding no listed file is not covered by the signature either
    # (SECURITY-CASES 32): an empty one could still steer a tool that looks.
    unsigned = folders_under(root) - folders_of(entries)
    if unsigned:
        raise IntegrityError(f"bundle: folders not in the manifest: {sorted(unsigned)}")
    for name, digest in entries.items():
        if not hmac.compare_digest(sha256_file(root / name), digest):
            raise IntegrityError(f"bundle: {name} does not match its SHA-256 in the manifest")
    return entries
