"""The federation's small documents (docs/formats/federation-v1.md): a site's
enrollment request, the site kit the coordinator issues for it, and the
release file that carries a signed manifest with its adapter.  No I/O.

The kit holds one secret, the federation's release key (releases are
distributed sealed under it); it is encrypted to the X25519 key the site
put in its request, so the kit may travel on any medium.  A release file is
encrypted under that key, and its manifest is signed by the federation key:
a courier can read neither, and changing a byte is caught twice.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runtime.errors import IntegrityError, InvalidArgument

REQUEST_FORMAT = "hearth-site-request/1"
KIT_FORMAT = "hearth-site-kit/1"
RELEASE_MAGIC = b"HEARTH-RELEASE-1"          # 16 bytes
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError:
        raise InvalidArgument(f"{what}: not base64") from None


def raw_public(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(*_RAW)


def _load(text: bytes, fmt: str, what: str, fields: set[str]) -> dict[str, object]:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise InvalidArgument(f"{what}: not a {fmt} document")
    if set(doc) != fields:
        raise InvalidArgument(f"{what}: fields {sorted(set(doc) ^ fields)} are missing or "
                              "unknown")
    return doc


@dataclass(frozen=True)
class SiteRequest:
    site: str
    csr_pem: str                  # its TLS client key's CSR, CN = site
    signing_key: str              # base64 raw Ed25519: signs its update files
    exchange_key: str             # base64 raw X25519: the kit's secret is sealed to it
    format: str = REQUEST_FORMAT

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def loads(cls, text: bytes) -> SiteRequest:
        doc = _load(text, REQUEST_FORMAT, "site request", set(cls.__dataclass_fields__))
        req = cls(**doc)  # type: ignore[arg-type]
        req.signing_public()
        req.exchange_public()
        return req

    def signing_public(self) -> Ed25519PublicKey:
        try:
            return Ed25519PublicKey.from_public_bytes(unb64(self.signing_key, "signing_key"))
        except ValueError:
            raise InvalidArgument("site request: signing_key is not an Ed25519 key") from None

    def exchange_public(self) -> X25519PublicKey:
        try:
            return X25519PublicKey.from_public_bytes(unb64(self.exchange_key, "exchange_key"))
        except ValueError:
            raise InvalidArgument("site request: exchange_key is not an X25519 key") from None


def _seal_key(shared: bytes, context: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, hashlib.sha256(context).digest(),
                KIT_FORMAT.encode()).derive(shared)


@dataclass(frozen=True)
class SiteKit:
    federation: str
    site: str
    coordinator: str              # host:port of the online coordinator ("" if air-gapped)
    ca_cert_pem: str
    site_cert_pem: str
    federation_key: str           # base64 raw Ed25519: verifies plans and releases
    coordinator_exchange_key: str  # base64 raw X25519: updates are encrypted to it
    base_model_sha256: str
    sealed_release_key: str       # base64: ephemeral X25519 public (32) | AES-GCM ciphertext
    format: str = KIT_FORMAT

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def loads(cls, text: bytes) -> SiteKit:
        doc = _load(text, KIT_FORMAT, "site kit", set(cls.__dataclass_fields__))
        kit = cls(**doc)  # type: ignore[arg-type]
        try:
            x509.load_pem_x509_certificate(kit.ca_cert_pem.encode())
            x509.load_pem_x509_certificate(kit.site_cert_pem.encode())
            Ed25519PublicKey.from_public_bytes(unb64(kit.federation_key, "federation_key"))
            X25519PublicKey.from_public_bytes(unb64(kit.coordinator_exchange_key,
                                                    "coordinator_exchange_key"))
        except ValueError as exc:
            raise InvalidArgument(f"site kit: {exc}") from None
        return kit

    @staticmethod
    def seal_release_key(release_key: bytes, site_exchange: X25519PublicKey,
                         site: str) -> str:
        eph = X25519PrivateKey.generate()
        eph_raw = raw_public(eph.public_key())
        key = _seal_key(eph.exchange(site_exchange), eph_raw + site.encode())
        return b64(eph_raw + AESGCM(key).encrypt(b"\0" * 12, release_key, site.encode()))

    def open_release_key(self, site_exchange: X25519PrivateKey) -> bytes:
        blob = unb64(self.sealed_release_key, "sealed_release_key")
        try:
            eph = X25519PublicKey.from_public_bytes(blob[:32])
            key = _seal_key(site_exchange.exchange(eph), blob[:32] + self.site.encode())
            return AESGCM(key).decrypt(b"\0" * 12, blob[32:], self.site.encode())
        except (ValueError, InvalidTag):
            raise IntegrityError("site kit: the release key is not sealed to this site's "
                                 "key (a kit for another enrollment?)") from None


# ---- release files -----------------------------------------------------------------------

def seal_release_file(envelope: bytes, adapter: bytes, release_key: bytes) -> bytes:
    """MAGIC | u32 envelope length | envelope | nonce | AES-GCM(adapter)."""
    prefix = RELEASE_MAGIC + struct.pack(">I", len(envelope)) + envelope
    nonce = os.urandom(12)
    return prefix + nonce + AESGCM(release_key).encrypt(nonce, adapter, prefix)


def open_release_file(blob: bytes, release_key: bytes) -> tuple[bytes, bytes]:
    """(envelope, adapter).  The caller still verifies the envelope's
    signature and the adapter's digest (TrustedReleases.accept)."""
    head = len(RELEASE_MAGIC) + 4
    if not blob.startswith(RELEASE_MAGIC) or len(blob) < head:
        raise IntegrityError("release file: not a hearth-release-file/1 (bad magic)")
    (n,) = struct.unpack(">I", blob[len(RELEASE_MAGIC):head])
    if len(blob) < head + n + 12 + 16:
        raise IntegrityError("release file: truncated")
    prefix = blob[:head + n]
    try:
        adapter = AESGCM(release_key).decrypt(blob[head + n:head + n + 12],
                                              blob[head + n + 12:], prefix)
    except InvalidTag:
        raise IntegrityError("release file: does not decrypt under this federation's release "
                             "key (tampered, or for another federation)") from None
    return blob[head:head + n], adapter
