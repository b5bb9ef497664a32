"""Secure aggregation: the coordinator learns the sum of the sites' updates
and nothing about any one of them (Bonawitz et al., "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS 2017).

One round, as messages between sites and the coordinator (transport is the
caller's business; nothing here does I/O):

1. Every site advertises two X25519 public keys: `c` for encrypting shares
   to its peers, `s` for agreeing mask seeds with them.
2. Every site draws a self-mask seed b, splits b and its `s` private key into
   Shamir shares (threshold t of n), and encrypts one share of each to every
   peer with AES-GCM under the key agreed from `c` keys.  The coordinator
   routes the ciphertexts; it cannot read them.
3. Every site that is still there sends y = x + PRG(b) + sum over peers j of
   (+PRG(s_ij) if i < j else -PRG(s_ij)), all in Z_2^64 on fixed-point
   values: the pairwise masks cancel in the sum, the self-masks do not.
4. The coordinator names the survivors and the sites that dropped after
   step 2.  Each survivor returns its shares of b for survivors and of the
   `s` key for the dropped, never both for one site (which would unmask it).
   With t of them the coordinator rebuilds the self-masks and the dropped
   sites' pairwise masks, removes them, and has the sum.

Security model: honest-but-curious coordinator, as the paper's semi-honest
protocol; a site refuses an unmask request below the threshold or naming a
site as both survivor and dropped.  Against a coordinator that lies about
who dropped, the paper's consistency round (signatures over the survivor
list) is needed; sites here authenticate through the transport's mTLS.
"""
from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runtime.errors import FailedPrecondition, IntegrityError, InvalidArgument

SCALE_BITS = 24            # fixed point: values are integers of 2^-24
PRIME = 2**521 - 1         # Shamir's field: holds a 256-bit secret
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def quantize(x: np.ndarray) -> np.ndarray:
    """float -> Z_2^64 (two's complement fixed point)."""
    if not np.all(np.isfinite(x)):
        raise InvalidArgument("update: contains NaN or infinity")
    scaled = np.rint(np.asarray(x, dtype=np.float64) * (1 << SCALE_BITS))
    if np.any(np.abs(scaled) >= 2.0**62):
        raise InvalidArgument("update: values too large for fixed point (clip first)")
    return scaled.astype(np.int64).view(np.uint64)


def dequantize(v: np.ndarray) -> np.ndarray:
    return v.view(np.int64).astype(np.float64) / (1 << SCALE_BITS)


def prg(seed: bytes, n: int) -> np.ndarray:
    """n pseudo-random elements of Z_2^64: the ChaCha20 keystream of seed."""
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (8 * n)), dtype=np.uint64).copy()


def _kdf(secret: bytes, round_id: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, round_id, info).derive(secret)


def _agree(sk: X25519PrivateKey, peer_pk: bytes, round_id: bytes, info: bytes) -> bytes:
    return _kdf(sk.exchange(X25519PublicKey.from_public_bytes(peer_pk)), round_id, info)


# ---- Shamir's secret sharing over GF(2^521 - 1) ----------------------------

def shamir_split(secret: bytes, n: int, t: int) -> list[tuple[int, int]]:
    """n shares (x = 1..n) of a secret of at most 64 bytes; any t rebuild it."""
    if not 1 <= t <= n:
        raise InvalidArgument(f"threshold: must be in 1..{n}, got {t}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def shamir_combine(shares: list[tuple[int, int]], length: int) -> bytes:
    """The secret from shares (Lagrange interpolation at 0)."""
    if len({x for x, _ in shares}) != len(shares):
        raise InvalidArgument("shares: duplicate share index")
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num = den = 1
        for j, (xj, _) in enumerate(shares):
            if i != j:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * length):
        raise IntegrityError("shares: they do not rebuild a secret (too few, or not from "
                             "one split)")
    return secret.to_bytes(length, "big")


# ---- messages ----------------------------------------------------------------

@dataclass(frozen=True)
class AdvertiseKeys:
    site: str
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class EncryptedShares:
    sender: str
    ciphertexts: dict[str, bytes]   # recipient -> nonce || AES-GCM(shares)


@dataclass(frozen=True)
class MaskedInput:
    site: str
    y: np.ndarray                   # uint64


@dataclass(frozen=True)
class UnmaskResponse:
    site: str
    b_shares: dict[str, tuple[int, int]]     # survivor -> its share of b
    s_shares: dict[str, tuple[int, int]]     # dropped -> its share of the s key


def _pack_shares(sender: str, recipient: str, b: tuple[int, int], s: tuple[int, int]) -> bytes:
    head = f"{sender}\0{recipient}\0".encode()
    return head + struct.pack(">I", b[0]) + b[1].to_bytes(66, "big") + s[1].to_bytes(66, "big")


# ---- a site -----------------------------------------------------------------

@dataclass
class SecAggSite:
    site: str
    round_id: bytes
    threshold: int
    _c: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    _s: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    _b: bytes = field(default_factory=lambda: os.urandom(32))
    _roster: dict[str, AdvertiseKeys] = field(default_factory=dict)
    _held: dict[str, tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)

    def advertise(self) -> AdvertiseKeys:
        return AdvertiseKeys(self.site, self._c.public_key().public_bytes(*_RAW),
                             self._s.public_key().public_bytes(*_RAW))

    def share(self, roster: list[AdvertiseKeys]) -> EncryptedShares:
        self._roster = {k.site: k for k in roster}
        if self.site not in self._roster or len(self._roster) < self.threshold:
            raise FailedPrecondition("secure aggregation: the roster must include this site "
                                     f"and at least {self.threshold} sites")
        peers = sorted(self._roster)
        s_raw = self._s.private_bytes(serialization.Encoding.Raw,
                                      serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
        b_shares = shamir_split(self._b, len(peers), self.threshold)
        s_shares = shamir_split(s_raw, len(peers), self.threshold)
        out = {}
        for peer, b, s in zip(peers, b_shares, s_shares, strict=True):
            key = _agree(self._c, self._roster[peer].c_pk, self.round_id, b"shares")
            nonce = os.urandom(12)
            out[peer] = nonce + AESGCM(key).encrypt(
                nonce, _pack_shares(self.site, peer, b, s), self.round_id)
        return EncryptedShares(self.site, out)

    def _receive(self, sender: str, blob: bytes) -> None:
        key = _agree(self._c, self._roster[sender].c_pk, self.round_id, b"shares")
        try:
            plain = AESGCM(key).decrypt(blob[:12], blob[12:], self.round_id)
        except Exception as exc:
            raise IntegrityError(f"secure aggregation: shares from {sender} do not "
                                 "authenticate") from exc
        head = f"{sender}\0{self.site}\0".encode()
        if not plain.startswith(head):
            raise IntegrityError(f"secure aggregation: shares from {sender} are addressed "
                                 "to another site")
        body = plain[len(head):]
        x = struct.unpack(">I", body[:4])[0]
        self._held[sender] = ((x, int.from_bytes(body[4:70], "big")),
                              (x, int.from_bytes(body[70:136], "big")))

    def mask(self, update: np.ndarray, inbound: dict[str, bytes]) -> MaskedInput:
        """y = x + PRG(b) + signed pairwise masks with every peer that
        shared; `inbound` holds the ciphertexts routed to this site."""
        for sender, blob in inbound.items():
            if sender not in self._roster:
                raise IntegrityError(f"secure aggregation: shares from unknown site {sender}")
            self._receive(sender, blob)
        x = quantize(update)
        y = x + prg(self._b, x.size)
        for peer in self._held:
            if peer == self.site:
                continue
            seed = _agree(self._s, self._roster[peer].s_pk, self.round_id, b"mask")
            y = y + prg(seed, x.size) if self.site < peer else y - prg(seed, x.size)
        return MaskedInput(self.site, y)

    def unmask(self, survivors: list[str], dropped: list[str]) -> UnmaskResponse:
        if set(survivors) & set(dropped):
            raise FailedPrecondition("secure aggregation: a site cannot be both a survivor "
                                     "and dropped (that would unmask it)")
        if len(survivors) < self.threshold:
            raise FailedPrecondition(f"secure aggregation: {len(survivors)} survivors is "
                                     f"below the threshold of {self.threshold}")
        return UnmaskResponse(
            self.site,
            {s: self._held[s][0] for s in survivors if s in self._held},
            {d: self._held[d][1] for d in dropped if d in self._held})


# ---- the coordinator ----------------------------------------------------------

@dataclass
class SecAggCoordinator:
    round_id: bytes
    threshold: int
    roster: dict[str, AdvertiseKeys] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)
    masked: dict[str, np.ndarray] = field(default_factory=dict)

    def collect_keys(self, keys: list[AdvertiseKeys]) -> list[AdvertiseKeys]:
        self.roster = {}
        for k in keys:
            if k.site in self.roster:
                raise InvalidArgument(f"secure aggregation: site {k.site} advertised twice")
            self.roster[k.site] = k
        if len({k.s_pk for k in keys}) != len(keys) or len({k.c_pk for k in keys}) != len(keys):
            raise IntegrityError("secure aggregation: two sites advertised the same key")
        if len(self.roster) < self.threshold:
            raise FailedPrecondition(f"secure aggregation: {len(self.roster)} sites is below "
                                     f"the threshold of {self.threshold}")
        return list(self.roster.values())

    def route(self, shares: list[EncryptedShares]) -> dict[str, dict[str, bytes]]:
        """Ciphertexts by recipient; only sites that shared take part further."""
        inbox: dict[str, dict[str, bytes]] = {site: {} for site in self.roster}
        for msg in shares:
            if msg.sender not in self.roster:
                raise IntegrityError(f"secure aggregation: shares from unknown site "
                                     f"{msg.sender}")
            self.shared.add(msg.sender)
            for recipient, blob in msg.ciphertexts.items():
                if recipient in inbox:
                    inbox[recipient][msg.sender] = blob
        return {site: inbox[site] for site in self.shared}

    def collect_masked(self, inputs: list[MaskedInput]) -> tuple[list[str], list[str]]:
        """(survivors, dropped): who sent a masked input, and who shared but
        did not."""
        for m in inputs:
            if m.site not in self.shared:
                raise IntegrityError(f"secure aggregation: input from {m.site}, which did "
                                     "not share its keys")
            self.masked[m.site] = m.y
        survivors = sorted(self.masked)
        if len(survivors) < self.threshold:
            raise FailedPrecondition(f"secure aggregation: {len(survivors)} inputs is below "
                                     f"the threshold of {self.threshold}")
        return survivors, sorted(self.shared - set(self.masked))

    def finish(self, responses: list[UnmaskResponse]) -> tuple[np.ndarray, list[str]]:
        """The sum of the survivors' updates, and who they are."""
        survivors = sorted(self.masked)
        dropped = sorted(self.shared - set(self.masked))
        if len(responses) < self.threshold:
            raise FailedPrecondition(f"secure aggregation: {len(responses)} unmask responses "
                                     f"is below the threshold of {self.threshold}")
        n = next(iter(self.masked.values())).size
        total = np.zeros(n, dtype=np.uint64)
        for y in self.masked.values():
            total = total + y
        for site in survivors:
            b = shamir_combine([r.b_shares[site] for r in responses if site in r.b_shares], 32)
            total = total - prg(b, n)
        for gone in dropped:
            raw = shamir_combine([r.s_shares[gone] for r in responses if gone in r.s_shares], 32)
            sk = X25519PrivateKey.from_private_bytes(raw)
            for site in survivors:
                seed = _agree(sk, self.roster[site].s_pk, self.round_id, b"mask")
                # Undo what `site` added for the pair (site, gone).
                total = total - prg(seed, n) if site < gone else total + prg(seed, n)
        return dequantize(total), survivors
