"""The master key (KEK) and the keyring (spec: docs/formats/keyring-v1.md).

Envelope encryption: every stored object has its own random data key (DEK),
kept only wrapped (AES-256-GCM) under the master key.  The master key comes
from one of three sources and is never written anywhere:
  * a passphrase, stretched with scrypt (its parameters are recorded);
  * a key file, refused unless only its owner can read it (mode 0600);
  * a systemd credential, $CREDENTIALS_DIRECTORY/NAME, so a unit can use
    LoadCredentialEncrypted= and bind the key to the machine's TPM2.

keyring.json records, per master key, how to derive it and a check value,
so a wrong key is refused at once, with one uniform message, and repeated
failures are slowed down (the wait survives restarts).  It may hold two
master keys while a rotation runs; see rotation in store.py.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from runtime.errors import ConfigError, FailedPrecondition, IntegrityError, NotFound, WrongKey
from runtime.storage.catalog_auth import CatalogKey
from runtime.storage.fsutil import atomic_write

KEYRING_FORMAT = "hearth-keyring/1"
# scrypt at N=2^15, r=8: about 0.1 s and 32 MiB per attempt on the
# development machine, which also paces guessing.
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}
_CHECK = b"hearth keyring check v1"
# A key whose check uses this label has an authenticated catalog: a catalog
# without its authentication head is then refused, not adopted.  Nobody
# without the key can turn a v2 check back into a v1 one.
_CHECK_AUTHENTICATED = b"hearth keyring check v2 (authenticated catalog)"
_WRAP = b"hearth/dek/v1"
_CATALOG_MAC = b"hearth/catalog-mac/v1"
MAX_BACKOFF_S = 60.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


@dataclass(frozen=True)
class KeySource:
    """Secret material for the master key, and where it came from."""

    kind: str                       # passphrase | key-file | credential
    label: str                      # path or credential name, for messages
    secret: bytes = field(repr=False)


def key_from_file(path: str) -> KeySource:
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"--key-file: cannot read {path}: {exc.strerror}") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"--key-file: {path} is readable by others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}")
    secret = p.read_bytes().strip()
    if len(secret) < 32:
        raise ConfigError(f"--key-file: {path} holds {len(secret)} bytes; a key file needs at "
                          "least 32 (hearth keys init --key-file creates one)")
    return KeySource("key-file", str(p), secret)


def passphrase_from_file(path: str) -> KeySource:
    try:
        text = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(f"--passphrase-file: cannot read {path}: {exc.strerror}") from exc
    if not text:
        raise ConfigError(f"--passphrase-file: {path} is empty")
    return KeySource("passphrase", str(path), text)


def key_from_credential(name: str) -> KeySource:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(f"--credential {name}: $CREDENTIALS_DIRECTORY is not set (run under "
                          "systemd with LoadCredential= or LoadCredentialEncrypted=)")
    if "/" in name or name in ("", ".", ".."):
        raise ConfigError(f"--credential: {name!r} is not a credential name")
    path = Path(directory) / name
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"--credential {name}: cannot read {path}: {exc.strerror}") from exc
    if len(secret) < 32:
        raise ConfigError(f"--credential {name}: holds {len(secret)} bytes, need at least 32")
    return KeySource("credential", name, secret)


def prompt_passphrase(confirm: bool = False) -> KeySource:
    if not sys.stdin.isatty():
        raise ConfigError("no master key given: use --key-file, --passphrase-file or "
                          "--credential (no terminal to ask for a passphrase)")
    first = getpass.getpass("Hearth passphrase: ").encode()
    if confirm and getpass.getpass("Repeat passphrase: ").encode() != first:
        raise ConfigError("the passphrases do not match")
    if not first:
        raise ConfigError("the passphrase is empty")
    return KeySource("passphrase", "prompt", first)


def key_source(key_file: str | None, passphrase_file: str | None, credential: str | None,
               confirm: bool = False) -> KeySource:
    """The one master key source the command line names (or a prompt)."""
    given = [x for x in (key_file, passphrase_file, credential) if x]
    if len(given) > 1:
        raise ConfigError("give one of --key-file, --passphrase-file, --credential")
    if key_file:
        return key_from_file(key_file)
    if passphrase_file:
        return passphrase_from_file(passphrase_file)
    if credential:
        return key_from_credential(credential)
    return prompt_passphrase(confirm)


def key_fingerprint(public: Ed25519PublicKey) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, in hex: how an operator
    names a signing key out of band (bundles, the audit log)."""
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def normal_fingerprint(text: str) -> str:
    """A fingerprint as typed: colons and capitals allowed."""
    return text.lower().replace(":", "").strip()


def create_key_file(path: str) -> None:
    """Writes 32 random bytes (base64) to a new file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")


def derive_kek(source: KeySource, entry: dict[str, Any]) -> bytes:
    salt = _unb64(entry["salt"])
    kdf = entry["kdf"]
    if kdf["name"] == "scrypt":
        return Scrypt(salt=salt, length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(
            source.secret)
    if kdf["name"] == "hkdf-sha256":
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                    info=b"hearth/kek/v1").derive(source.secret)
    raise IntegrityError(f"keyring: unknown key derivation {kdf['name']!r}")


def new_kek_entry(source: KeySource) -> tuple[dict[str, Any], bytes]:
    kdf = {"name": "scrypt", **SCRYPT} if source.kind == "passphrase" else {"name": "hkdf-sha256"}
    entry = {"id": "k-" + secrets.token_hex(6), "source": source.kind,
             "salt": _b64(secrets.token_bytes(32)), "kdf": kdf, "created": time.time()}
    kek = derive_kek(source, entry)
    entry["check"] = _b64(hmac.digest(kek, _CHECK_AUTHENTICATED, "sha256"))
    return entry, kek


@dataclass
class MasterKey:
    """An unlocked master key: wraps and unwraps data keys."""

    id: str
    key: bytes = field(repr=False)
    # The keyring's check predates catalog authentication: the catalog is
    # authenticated (trusted as it is) at this first open with the key.
    legacy: bool = False

    def catalog_key(self) -> CatalogKey:
        return CatalogKey(self.id, HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                        info=_CATALOG_MAC).derive(self.key))

    def _aad(self, object_id: str) -> bytes:
        return _WRAP + b"|" + self.id.encode() + b"|" + object_id.encode()

    def wrap(self, dek: bytes, object_id: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self.key).encrypt(nonce, dek, self._aad(object_id))

    def unwrap(self, wrapped: bytes, object_id: str) -> bytes:
        try:
            return AESGCM(self.key).decrypt(wrapped[:12], wrapped[12:], self._aad(object_id))
        except (InvalidTag, ValueError):
            raise IntegrityError(f"object {object_id}: its wrapped data key failed "
                                 "authentication") from None


class Keyring:
    """keyring.json in the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "keyring.json"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise NotFound(f"no keyring in {self.path.parent}: run `hearth keys init` "
                           "first") from None
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{self.path}: unreadable keyring ({exc})") from exc
        if data.get("format") != KEYRING_FORMAT:
            raise IntegrityError(f"{self.path}: unknown keyring format {data.get('format')!r}")
        return data

    def save(self, data: dict[str, Any]) -> None:
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o600)

    def init(self, source: KeySource) -> MasterKey:
        if self.exists():
            raise FailedPrecondition(f"{self.path} exists already; use `hearth keys rotate`")
        entry, kek = new_kek_entry(source)
        self.save({"format": KEYRING_FORMAT, "active": entry["id"], "keks": [entry],
                   "failed_attempts": 0, "last_failure": 0.0})
        return MasterKey(entry["id"], kek)

    def unlock(self, source: KeySource, now: float | None = None) -> MasterKey:
        """The master key `source` derives, if the keyring knows it.  Tries
        every recorded key (two exist while a rotation is unfinished)."""
        data = self.load()
        self._pace(data, now if now is not None else time.time())
        for entry in sorted(data["keks"], key=lambda e: e["id"] != data["active"]):
            if entry["source"] == "passphrase" and source.kind != "passphrase":
                continue
            if entry["source"] != "passphrase" and source.kind == "passphrase":
                continue
            kek = derive_kek(source, entry)
            check = _unb64(entry["check"])
            legacy = hmac.compare_digest(hmac.digest(kek, _CHECK, "sha256"), check)
            if legacy or hmac.compare_digest(hmac.digest(kek, _CHECK_AUTHENTICATED, "sha256"),
                                             check):
                if data.get("failed_attempts"):
                    data["failed_attempts"] = 0
                    self.save(data)
                return MasterKey(entry["id"], kek, legacy)
        data["failed_attempts"] = int(data.get("failed_attempts", 0)) + 1
        data["last_failure"] = time.time()
        self.save(data)
        raise WrongKey("the master key does not open this store")

    def mark_authenticated(self, master: MasterKey) -> None:
        """After the catalog's first authentication: the key's check becomes
        the v2 one, so a catalog stripped of its head is refused from now on."""
        data = self.load()
        for entry in data["keks"]:
            if entry["id"] == master.id:
                entry["check"] = _b64(hmac.digest(master.key, _CHECK_AUTHENTICATED, "sha256"))
        self.save(data)
        master.legacy = False

    @staticmethod
    def backoff_s(failed: int) -> float:
        return 0.0 if failed <= 0 else min(MAX_BACKOFF_S, 0.5 * 2 ** (failed - 1))

    def _pace(self, data: dict[str, Any], now: float) -> None:
        """Waits out the back-off that earlier failures earned."""
        wait = self.backoff_s(int(data.get("failed_attempts", 0)))
        # min(): a clock set back must not turn the back-off into a hang.
        remaining = min(wait, float(data.get("last_failure", 0.0)) + wait - now)
        if remaining > 0:
            time.sleep(remaining)
