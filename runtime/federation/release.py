"""Signed release manifests and the site's decision to accept one
(docs/formats/release-v1.md).

A release is a global adapter version.  Its manifest is canonical JSON
(sorted keys, no spaces, UTF-8) signed with the federation's Ed25519 key;
the envelope carries the manifest text, the signature and the signing key's
fingerprint.  `TrustedReleases` holds what a site trusts (the federation
keys, its base model's digest, the highest version it has accepted) and
decides, without I/O, whether a release may be applied:

1. the signature verifies under a trusted key (else refused, untouched);
2. the manifest is well-formed, and its version is above the high-water
   mark (no rollback by replaying an older, validly signed release);
3. its base model digest is the site's;
4. the adapter bytes match its digest and size.

Going back is possible only through `rollback()`, which the caller must
audit; it does not lower the high-water mark for ordinary releases.

A manifest may say why its round started (`RoundTrigger`: the schedule, a
daily time, the drift trigger with the sites whose alarms counted, or an
operator by hand); manifests from before that member carry none, and still
verify.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import FailedPrecondition, IntegrityError, InvalidArgument
from runtime.names import is_name

FORMAT = "hearth-release/1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Why a round started: policy.decide's schedule, daily time or drift
# trigger, or an operator (`--rounds N`, the air-gapped `fed plan`).
TRIGGER_KINDS = ("schedule", "daily", "drift", "manual")
# Members a manifest may leave out (manifests signed before they existed);
# written only when set (a trigger) or non-empty (training energy), so older
# manifests and their signatures are unchanged.
OPTIONAL_MEMBERS = frozenset({"trigger", "training_energy"})


class UntrustedRelease(IntegrityError):
    """Bad signature, unknown key, or a tampered manifest or adapter."""


class RollbackRefused(FailedPrecondition):
    """A validly signed release at or below the version already accepted."""


def key_fingerprint(public: Ed25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


_SOURCE = re.compile(r"(nvml|rapl|estimate)(\+(nvml|rapl|estimate)){0,3}")


@dataclass(frozen=True)
class TrainingEnergy:
    """The energy a site spent training one round, and where the figure
    comes from (runtime/energy/meters.py: "nvml", "rapl", "estimate", or
    a sum such as "nvml+estimate"); an estimate says so."""

    joules: float
    source: str

    def __post_init__(self) -> None:
        if (not isinstance(self.joules, float) or not 0 <= self.joules < math.inf
                or not isinstance(self.source, str) or not _SOURCE.fullmatch(self.source)):
            raise InvalidArgument(f"training energy: {self.joules!r} J from "
                                  f"{self.source!r}: needs finite joules >= 0 and a meter "
                                  "source (nvml, rapl, estimate, joined by +)")


@dataclass(frozen=True)
class RoundTrigger:
    """Why the round behind a release started.  `sites` and `signals` only
    for "drift": the sites (their federation names) whose alarms counted,
    sorted, and per signal the smallest p-value those alarms reported."""

    kind: str                                           # one of TRIGGER_KINDS
    sites: tuple[str, ...] = ()
    signals: dict[str, float] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        return {"kind": self.kind, "sites": list(self.sites),
                "signals": dict(sorted(self.signals.items()))}


MANUAL = RoundTrigger("manual")


@dataclass(frozen=True)
class ReleaseManifest:
    federation: str
    version: int
    parent_version: int
    base_model_sha256: str
    adapter_sha256: str
    adapter_bytes: int
    created: str                      # RFC 3339, UTC
    metrics: dict[str, float] = field(default_factory=dict)
    format: str = FORMAT
    trigger: RoundTrigger | None = None   # None: not recorded (manifests from before it)
    # site -> its training energy for the round (docs/energy.md)
    training_energy: dict[str, TrainingEnergy] = field(default_factory=dict)

    def canonical(self) -> bytes:
        doc = asdict(self)
        for name in OPTIONAL_MEMBERS:
            if not doc[name]:
                del doc[name]
        return json.dumps(doc, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")


def _field(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UntrustedRelease(f"release manifest: {key} must be {kind.__name__}")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_trigger(value: Any) -> RoundTrigger:
    """The manifest's `trigger` member (docs/formats/release-v1.md)."""
    if not isinstance(value, dict) or set(value) != {"kind", "sites", "signals"}:
        raise UntrustedRelease("release manifest: trigger must be an object with exactly "
                               "kind, sites and signals")
    kind, sites, signals = value["kind"], value["sites"], value["signals"]
    if kind not in TRIGGER_KINDS:
        raise UntrustedRelease(f"release manifest: trigger kind must be one of "
                               f"{', '.join(TRIGGER_KINDS)}")
    if not (isinstance(sites, list) and all(isinstance(x, str) and is_name(x) for x in sites)
            and sites == sorted(set(sites))):
        raise UntrustedRelease("release manifest: trigger sites must be distinct site names, "
                               "sorted")
    if not (isinstance(signals, dict) and all(
            is_name(k) and _number(v) and 0.0 <= v <= 1.0 for k, v in signals.items())):
        raise UntrustedRelease("release manifest: trigger signals must map signal names to "
                               "p-values in [0, 1]")
    if (kind == "drift") != bool(sites) or (kind != "drift" and signals):
        raise UntrustedRelease("release manifest: a drift trigger names its sites; no other "
                               "trigger names sites or signals")
    return RoundTrigger(kind, tuple(sites), dict(signals))


def parse_manifest(text: bytes) -> ReleaseManifest:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UntrustedRelease(f"release manifest: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UntrustedRelease("release manifest: not a JSON object")
    known = set(ReleaseManifest.__dataclass_fields__)
    if not known - OPTIONAL_MEMBERS <= set(doc) <= known:
        odd = (set(doc) ^ known) - (OPTIONAL_MEMBERS - set(doc))
        raise UntrustedRelease(f"release manifest: fields {sorted(odd)} are missing or "
                               "unknown")
    if doc["format"] != FORMAT:
        raise UntrustedRelease(f"release manifest: format {doc['format']!r} is not {FORMAT}")
    metrics = _field(doc, "metrics", dict)
    if not all(isinstance(k, str) and _number(v) for k, v in metrics.items()):
        raise UntrustedRelease("release manifest: metrics must map names to numbers")
    m = ReleaseManifest(
        federation=_field(doc, "federation", str), version=_field(doc, "version", int),
        parent_version=_field(doc, "parent_version", int),
        base_model_sha256=_field(doc, "base_model_sha256", str),
        adapter_sha256=_field(doc, "adapter_sha256", str),
        adapter_bytes=_field(doc, "adapter_bytes", int), created=_field(doc, "created", str),
        metrics=metrics, training_energy=_training_energy(doc.get("training_energy", {})),
        trigger=parse_trigger(doc["trigger"]) if "trigger" in doc else None)
    if not is_name(m.federation):
        raise UntrustedRelease("release manifest: federation is not a valid name")
    if not (m.version >= 1 and 0 <= m.parent_version < m.version and m.adapter_bytes > 0):
        raise UntrustedRelease("release manifest: needs version >= 1, 0 <= parent_version < "
                               "version and adapter_bytes > 0")
    if not (_HEX64.fullmatch(m.base_model_sha256) and _HEX64.fullmatch(m.adapter_sha256)):
        raise UntrustedRelease("release manifest: digests must be 64 lowercase hex digits")
    if m.canonical() != text:
        raise UntrustedRelease("release manifest: not in canonical form")
    return m


def _training_energy(value: Any) -> dict[str, TrainingEnergy]:
    if not isinstance(value, dict):
        raise UntrustedRelease("release manifest: training_energy must be an object")
    out = {}
    for site, entry in value.items():
        if not (is_name(site) and isinstance(entry, dict)
                and set(entry) == {"joules", "source"}):
            raise UntrustedRelease("release manifest: training_energy maps site names to "
                                   "{joules, source}")
        try:
            out[site] = TrainingEnergy(entry["joules"], entry["source"])
        except InvalidArgument as exc:
            raise UntrustedRelease(f"release manifest: {exc}") from None
    return out


def sign_envelope(text: bytes, key: Ed25519PrivateKey) -> bytes:
    """Canonical manifest text, its Ed25519 signature and the key's
    fingerprint, as one JSON document."""
    return json.dumps({"manifest": text.decode("utf-8"),
                       "signature": base64.b64encode(key.sign(text)).decode("ascii"),
                       "key": key_fingerprint(key.public_key())},
                      sort_keys=True, indent=1).encode("utf-8")


def open_envelope(envelope: bytes, keys: dict[str, Ed25519PublicKey], what: str) -> bytes:
    """The manifest text, once its signature verifies under a trusted key."""
    try:
        env = json.loads(envelope)
        text = env["manifest"].encode("utf-8")
        sig = base64.b64decode(env["signature"], validate=True)
        fp = env["key"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UntrustedRelease(f"{what}: not a signed envelope ({exc})") from None
    key = keys.get(fp) if isinstance(fp, str) else None
    if key is None:
        raise UntrustedRelease(f"{what}: signed by an unknown key {str(fp)[:16]}...")
    try:
        key.verify(sig, text)
    except InvalidSignature:
        raise UntrustedRelease(f"{what}: the signature does not verify") from None
    return text


def sign_release(manifest: ReleaseManifest, key: Ed25519PrivateKey) -> bytes:
    """The envelope a coordinator publishes."""
    return sign_envelope(manifest.canonical(), key)


@dataclass
class TrustedReleases:
    federation: str
    keys: dict[str, Ed25519PublicKey]     # fingerprint -> federation key
    base_model_sha256: str
    high_water: int = 0                   # highest version accepted (persisted by caller)

    def verify(self, envelope: bytes) -> ReleaseManifest:
        """Signature and form only: what any holder of the envelope can check."""
        return parse_manifest(open_envelope(envelope, self.keys, "release"))

    def accept(self, envelope: bytes, adapter: bytes) -> ReleaseManifest:
        """Every check before anything is applied; on success the caller
        applies the adapter and then calls `applied()`."""
        m = self.verify(envelope)
        if m.federation != self.federation:
            raise UntrustedRelease(f"release: for federation {m.federation!r}, this site is in "
                                   f"{self.federation!r}")
        if m.version <= self.high_water:
            raise RollbackRefused(f"release: version {m.version} is not above version "
                                  f"{self.high_water}, already accepted (use `hearth fed "
                                  "rollback` to go back on purpose)")
        if not hmac.compare_digest(m.base_model_sha256, self.base_model_sha256):
            raise FailedPrecondition("release: built for another base model "
                                     f"({m.base_model_sha256[:12]}, this site serves "
                                     f"{self.base_model_sha256[:12]})")
        self._check_adapter(m, adapter)
        return m

    def applied(self, m: ReleaseManifest) -> None:
        self.high_water = max(self.high_water, m.version)

    def rollback(self, envelope: bytes, adapter: bytes) -> ReleaseManifest:
        """An explicit return to an earlier release: still signed, same base
        model, same federation; the high-water mark stays."""
        m = self.verify(envelope)
        if m.federation != self.federation or m.base_model_sha256 != self.base_model_sha256:
            raise UntrustedRelease("rollback: the release is for another federation or base "
                                   "model")
        if m.version > self.high_water:
            raise FailedPrecondition(f"rollback: version {m.version} was never accepted "
                                     f"(highest: {self.high_water})")
        self._check_adapter(m, adapter)
        return m

    @staticmethod
    def _check_adapter(m: ReleaseManifest, adapter: bytes) -> None:
        if len(adapter) != m.adapter_bytes or not hmac.compare_digest(
                hashlib.sha256(adapter).hexdigest(), m.adapter_sha256):
            raise UntrustedRelease("release: the adapter does not match the manifest's digest")
