"""Release manifests: SECURITY-CASES 9 and 10 (rollback; an unknown key or a
bad signature), tampering, base-model and adapter checks, explicit rollback."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import FailedPrecondition
from runtime.federation.release import (
    ReleaseManifest,
    RollbackRefused,
    RoundTrigger,
    TrustedReleases,
    UntrustedRelease,
    key_fingerprint,
    sign_release,
)

BASE = hashlib.sha256(b"base model").hexdigest()
KEY = Ed25519PrivateKey.generate()


def release(version: int, adapter: bytes, key: Ed25519PrivateKey = KEY, **kw: object
            ) -> bytes:
    fields: dict = dict(federation="clinics", version=version, parent_version=version - 1,
                        base_model_sha256=BASE, adapter_sha256=hashlib.sha256(adapter).hexdigest(),
                        adapter_bytes=len(adapter), created="2026-11-29T12:00:00Z",
                        metrics={"ppl_after": 12.5})
    fields.update(kw)
    return sign_release(ReleaseManifest(**fields), key)


def site() -> TrustedReleases:
    return TrustedReleases("clinics", {key_fingerprint(KEY.public_key()): KEY.public_key()},
                           BASE)


def test_accept_apply_and_the_high_water_mark() -> None:
    t = site()
    m = t.accept(release(1, b"adapter-1"), b"adapter-1")
    t.applied(m)
    assert t.high_water == 1
    t.applied(t.accept(release(3, b"adapter-3"), b"adapter-3"))   # a skipped release is fine
    assert t.high_water == 3


def test_9_replaying_an_older_signed_release_is_refused() -> None:
    t = site()
    old = release(1, b"a1")
    t.applied(t.accept(old, b"a1"))
    t.applied(t.accept(release(2, b"a2"), b"a2"))
    for env, adapter in ((old, b"a1"), (release(2, b"a2"), b"a2")):
        with pytest.raises(RollbackRefused, match="not above version 2"):
            t.accept(env, adapter)
    # An explicit rollback is possible, and leaves the mark where it was.
    assert t.rollback(old, b"a1").version == 1 and t.high_water == 2
    with pytest.raises(FailedPrecondition, match="never accepted"):
        t.rollback(release(5, b"a5"), b"a5")


def test_10_unknown_key_and_bad_signature_are_refused() -> None:
    t = site()
    with pytest.raises(UntrustedRelease, match="unknown key"):
        t.accept(release(1, b"a", key=Ed25519PrivateKey.generate()), b"a")
    env = json.loads(release(1, b"a"))
    forged = Ed25519PrivateKey.generate().sign(env["manifest"].encode())
    env["signature"] = base64.b64encode(forged).decode()
    with pytest.raises(UntrustedRelease, match="does not verify"):
        t.accept(json.dumps(env).encode(), b"a")
    assert t.high_water == 0


def test_tampered_manifest_adapter_or_envelope() -> None:
    t = site()
    env = json.loads(release(1, b"a"))
    env["manifest"] = env["manifest"].replace('"version":1', '"version":9')
    with pytest.raises(UntrustedRelease, match="does not verify"):
        t.accept(json.dumps(env).encode(), b"a")
    with pytest.raises(UntrustedRelease, match="adapter does not match"):
        t.accept(release(1, b"a"), b"b")
    for junk in (b"", b"[]", b"{}", b'{"manifest": 1, "signature": "x", "key": "y"}'):
        with pytest.raises(UntrustedRelease):
            t.accept(junk, b"a")


def test_wrong_base_model_or_federation() -> None:
    t = site()
    with pytest.raises(FailedPrecondition, match="another base model"):
        t.accept(release(1, b"a", base_model_sha256="0" * 64), b"a")
    with pytest.raises(UntrustedRelease, match="federation"):
        t.accept(release(1, b"a", federation="banks"), b"a")


def test_signed_but_malformed_manifests_are_refused() -> None:
    t = site()
    with pytest.raises(UntrustedRelease, match="parent_version"):
        t.accept(release(2, b"a", parent_version=2), b"a")
    with pytest.raises(UntrustedRelease, match="digests"):
        t.accept(release(1, b"a", adapter_sha256="XYZ"), b"a")
    with pytest.raises(UntrustedRelease, match="version must be int"):
        t.accept(release(True, b"a"), b"a")  # type: ignore[arg-type]


def test_golden_vector() -> None:
    """docs/formats/release-v1.md: signing is deterministic, and the vector
    verifies and is accepted by a site that trusts its key."""
    from pathlib import Path

    vec = json.loads((Path(__file__).parent / "vectors" / "release-v1.json").read_text())
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["private_key_seed_hex"]))
    adapter = base64.b64decode(vec["adapter_b64"])
    envelope = vec["envelope"].encode()
    t = TrustedReleases("clinics", {key_fingerprint(key.public_key()): key.public_key()},
                        vec["base_model_sha256"], high_water=2)
    m = t.accept(envelope, adapter)
    assert (m.version, m.parent_version, m.metrics["epsilon"]) == (3, 2, 1.25)
    assert sign_release(m, key) == envelope
    doc = json.loads(json.loads(envelope)["manifest"])
    assert list(doc) == sorted(doc) and doc["format"] == "hearth-release/1"
    assert "trigger" not in doc and m.trigger is None        # signed before the member
    # the same key's v4, whose round the drift trigger started
    drift = vec["envelope_drift_trigger"].encode()
    m4 = t.accept(drift, adapter)
    assert m4.trigger == RoundTrigger("drift", ("clinic-a", "clinic-b"),
                                      {"nll": 2.5e-07, "prompt_length": 0.5})
    assert sign_release(m4, key) == drift


def test_the_trigger_member_is_optional_and_checked() -> None:
    """A manifest says why its round started, or (signed before the member
    existed) nothing, and both verify; a malformed trigger is refused like
    any malformed member.  Checked that it can fail: with
    OPTIONAL_MEMBERS empty the manifest without a trigger is refused
    ("trigger must be an object"); without the drift/sites rule in
    parse_trigger a drift trigger without sites is accepted (DID NOT
    RAISE)."""
    t = site()
    assert t.verify(release(1, b"a")).trigger is None
    drift = RoundTrigger("drift", ("ward-0", "ward-1"), {"prompt_nll": 0.0001})
    assert t.verify(release(1, b"a", trigger=drift)).trigger == drift
    assert t.verify(release(1, b"a", trigger=RoundTrigger("schedule"))).trigger == \
        RoundTrigger("schedule")
    bad = [RoundTrigger("cron"), RoundTrigger("drift"),                      # no sites
           RoundTrigger("schedule", ("ward-0",)),
           RoundTrigger("daily", (), {"prompt_nll": 0.1}),
           RoundTrigger("drift", ("ward-1", "ward-0")),                      # not sorted
           RoundTrigger("drift", ("ward-0",), {"prompt_nll": 1.5}),
           RoundTrigger("drift", ("ward 0",))]
    for trigger in bad:
        with pytest.raises(UntrustedRelease, match="trigger"):
            t.verify(release(1, b"a", trigger=trigger))
