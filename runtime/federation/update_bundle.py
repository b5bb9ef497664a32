"""Air-gapped site updates (docs/formats/update-v1.md): a site's round update
as one file for removable media, signed by the site and readable only by
the coordinator.

Secure aggregation needs several exchanges, so air-gapped rounds protect the
update with DP (noise added by the site) and encryption to the coordinator
instead: the coordinator sees each noised update, a courier sees nothing.

    file = MAGIC | u32 header length | header | ciphertext | signature (64)

* header: canonical JSON (format, federation, round, site, tokens, size,
  the coordinator key's fingerprint, the ephemeral X25519 public key);
* ciphertext: AES-256-GCM of the float32 update under a key from X25519
  (ephemeral, coordinator) and HKDF-SHA256, with MAGIC|length|header as
  associated data, nonce 0 (every key is used once);
* signature: the site's Ed25519 signature over everything before it.

`open_update` is the coordinator's decision, with no I/O: each refusal says
which check failed (SECURITY-CASES 24).
"""
from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runtime.errors import IntegrityError, InvalidArgument
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.release import TrainingEnergy

MAGIC = b"HEARTH-UPDATE-1\n"
FORMAT = "hearth-update/1"
MAX_HEADER = 64 << 10
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class RefusedUpdate(IntegrityError):
    """An update file failed one of the checks; the message names it."""


def x25519_fingerprint(public: X25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(*_RAW)).hexdigest()


def _key(shared: bytes, header: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, hashlib.sha256(header).digest(),
                FORMAT.encode()).derive(shared)


def seal_update(update: SiteUpdate, federation: str, round_no: int, site_key: Ed25519PrivateKey,
                coordinator: X25519PublicKey, energy: TrainingEnergy | None = None) -> bytes:
    """`energy`: what training the update cost the site (the optional header
    members energy_joules and energy_source)."""
    eph = X25519PrivateKey.generate()
    vec = np.ascontiguousarray(update.delta, dtype="<f4")
    fields: dict[str, object] = {
        "format": FORMAT, "federation": federation, "round": round_no, "site": update.site,
        "tokens": update.tokens, "size": int(vec.size),
        "coordinator": x25519_fingerprint(coordinator),
        "ephemeral": base64.b64encode(eph.public_key().public_bytes(*_RAW)).decode(),
    }
    if energy is not None:
        fields["energy_joules"], fields["energy_source"] = energy.joules, energy.source
    header = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    prefix = MAGIC + struct.pack(">I", len(header)) + header
    key = _key(eph.exchange(coordinator), header)
    body = AESGCM(key).encrypt(b"\0" * 12, vec.tobytes(), prefix)
    return prefix + body + site_key.sign(prefix + body)


@dataclass
class UpdateInbox:
    """What the coordinator checks updates against, and what it has seen."""

    federation: str
    round: int
    coordinator_key: X25519PrivateKey
    sites: dict[str, Ed25519PublicKey]      # enrolled sites and their signing keys
    size: int                               # expected update length
    received: set[str] = field(default_factory=set)
    energy: dict[str, TrainingEnergy] = field(default_factory=dict)   # by site, when sent

    def open_update(self, blob: bytes) -> SiteUpdate:
        if not blob.startswith(MAGIC):
            raise RefusedUpdate("update: not a hearth-update/1 file (bad magic)")
        if len(blob) < len(MAGIC) + 4:
            raise RefusedUpdate("update: truncated (no header length)")
        (n,) = struct.unpack(">I", blob[len(MAGIC):len(MAGIC) + 4])
        start = len(MAGIC) + 4
        if n > MAX_HEADER or len(blob) < start + n + 16 + 64:
            raise RefusedUpdate("update: truncated (shorter than its header says)")
        header = blob[start:start + n]
        try:
            h = json.loads(header)
            site, round_no, federation = h["site"], h["round"], h["federation"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RefusedUpdate(f"update: header is not valid ({exc})") from None
        if h.get("format") != FORMAT:
            raise RefusedUpdate(f"update: format {h.get('format')!r} is not {FORMAT}")
        if federation != self.federation:
            raise RefusedUpdate(f"update: from federation {federation!r}, not {self.federation!r}")
        signer = self.sites.get(site) if isinstance(site, str) else None
        if signer is None:
            raise RefusedUpdate(f"update: site {site!r} is not enrolled")
        body, sig = blob[start + n:-64], blob[-64:]
        try:
            signer.verify(sig, blob[:-64])
        except InvalidSignature:
            raise RefusedUpdate(f"update: the signature of site {site!r} does not verify "
                                "(tampered or truncated)") from None
        if round_no != self.round:
            raise RefusedUpdate(f"update: for round {round_no}, the open round is {self.round} "
                                "(replayed or late)")
        if site in self.received:
            raise RefusedUpdate(f"update: site {site!r} already sent its update for round "
                                f"{self.round} (replayed)")
        coordinator = self.coordinator_key.public_key()
        if h.get("coordinator") != x25519_fingerprint(coordinator):
            raise RefusedUpdate("update: encrypted to another coordinator key")
        try:
            eph = X25519PublicKey.from_public_bytes(base64.b64decode(h["ephemeral"]))
            plain = AESGCM(_key(self.coordinator_key.exchange(eph), header)).decrypt(
                b"\0" * 12, body, blob[:start + n])
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise RefusedUpdate("update: does not decrypt with this coordinator's key") from None
        size, tokens = h.get("size"), h.get("tokens")
        if size != self.size or len(plain) != 4 * self.size:
            raise RefusedUpdate(f"update: {len(plain) // 4} values, the round expects "
                                f"{self.size}")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
            raise RefusedUpdate("update: token count must be a positive integer")
        if "energy_joules" in h or "energy_source" in h:
            try:
                self.energy[site] = TrainingEnergy(h.get("energy_joules"),
                                                   h.get("energy_source"))
            except InvalidArgument as exc:
                raise RefusedUpdate(f"update: {exc}") from None
        self.received.add(site)
        return SiteUpdate(site, np.frombuffer(plain, dtype="<f4").copy(), tokens)
