"""Golden vectors for docs/formats/gate-v1.md, checked twice: by a decoder
written from the spec page alone (json, hashlib, cryptography; nothing from
runtime/), and by the implementation, which must still read them and sign
the same bytes (Ed25519 is deterministic).  `python -m
tests.federation.test_gate_vectors` writes the vector again.

How these can fail: the spec decoder was run with the canonical form's
separators changed (`", "`) and with the fingerprint over the raw key
instead of its DER SubjectPublicKeyInfo; both failed."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VECTOR = Path(__file__).parent / "vectors" / "gate-v1.json"


# ---- the decoder, from the spec page alone ----------------------------------------------

def spec_open(envelope: bytes, public: Ed25519PublicKey) -> dict[str, Any]:
    env = json.loads(envelope)
    assert set(env) == {"manifest", "signature", "key"}
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert env["key"] == hashlib.sha256(der).hexdigest()
    text = env["manifest"].encode("utf-8")
    public.verify(base64.b64decode(env["signature"], validate=True), text)
    doc = json.loads(text)
    assert json.dumps(doc, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8") == text
    return dict(doc)


def spec_open_candidate(blob: bytes, release_key: bytes) -> tuple[bytes, bytes]:
    """federation-v1.md's release file: MAGIC | u32 BE length | envelope |
    nonce | AES-GCM(adapter), the prefix as associated data."""
    magic = b"HEARTH-RELEASE-1"
    assert blob.startswith(magic)
    (n,) = struct.unpack(">I", blob[16:20])
    prefix = blob[:20 + n]
    adapter = AESGCM(release_key).decrypt(blob[20 + n:32 + n], blob[32 + n:], prefix)
    return blob[20:20 + n], adapter


def test_gate_v1_by_the_spec() -> None:
    vec = json.loads(VECTOR.read_text())
    fed = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["federation_seed_hex"]))
    site = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["site_seed_hex"]))

    envelope, adapter = spec_open_candidate(base64.b64decode(vec["candidate_file_b64"]),
                                            bytes.fromhex(vec["release_key_hex"]))
    cand = spec_open(envelope, fed.public_key())
    assert cand["format"] == "hearth-candidate/1" and cand["round"] == 4
    assert cand["adapter_sha256"] == hashlib.sha256(adapter).hexdigest()
    assert cand["adapter_bytes"] == len(adapter)

    ev = spec_open(vec["evaluation"].encode(), site.public_key())
    assert ev["format"] == "hearth-candidate-evaluation/1" and ev["site"] == "ward-0"
    assert ev["candidate_sha256"] == cand["adapter_sha256"]
    assert ev["candidate_nll_sum"] is None                  # diverged: not finite
    assert math.exp(ev["current_nll_sum"] / ev["current_tokens"]) == pytest.approx(10.0)

    rej = spec_open(vec["rejection"].encode(), fed.public_key())
    assert rej["format"] == "hearth-gate-rejection/1" and rej["round"] == 4
    assert rej["candidate_adapter_sha256"] == cand["adapter_sha256"]
    assert rej["sites"]["ward-0"]["candidate_ppl"] is None and rej["margin"] == 0.02


# ---- the implementation ------------------------------------------------------------------

def build(candidate_file: bytes | None = None) -> dict[str, Any]:
    """The vector's documents as the implementation signs them; the
    candidate file's nonce is random, so an existing one is kept."""
    from runtime.federation.coordinator import SiteEval
    from runtime.federation.gate import (
        CandidateEvaluation,
        CandidateManifest,
        decide,
        rejection_text,
        seal_candidate_file,
        sign_evaluation,
        sign_rejection,
    )

    fed = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    site = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    release_key = bytes(range(64, 96))
    adapter = b"GGUF candidate adapter bytes"
    digest = hashlib.sha256(adapter).hexdigest()
    m = CandidateManifest("clinics", 4, 3, "ab" * 32, digest, len(adapter))
    if candidate_file is None:
        candidate_file = seal_candidate_file(m, adapter, fed, release_key)
    ev = CandidateEvaluation("clinics", "ward-0", 4, digest, 3, SiteEval(math.nan, 100.0),
                             SiteEval(math.log(10.0) * 100.0, 100.0))
    decision = decide({"ward-0": ev.figures()}, {"ward-0", "ward-1"}, 0.02, 1)
    rejection = sign_rejection(rejection_text("clinics", 4, 3, digest, decision,
                                              "2026-12-02T01:00:00Z"), fed)
    return {"federation_seed_hex": bytes(range(32)).hex(),
            "site_seed_hex": bytes(range(32, 64)).hex(), "release_key_hex": release_key.hex(),
            "candidate_file_b64": base64.b64encode(candidate_file).decode(),
            "evaluation": sign_evaluation(ev, site).decode(),
            "rejection": rejection.decode()}


def test_gate_v1_by_the_implementation() -> None:
    from runtime.federation.gate import open_candidate_file, read_evaluation, read_rejection
    from runtime.federation.release import key_fingerprint

    vec = json.loads(VECTOR.read_text())
    blob = base64.b64decode(vec["candidate_file_b64"])
    assert build(blob) == vec                  # the same bytes signed again
    fed = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["federation_seed_hex"]))
    site = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["site_seed_hex"]))
    keys = {key_fingerprint(fed.public_key()): fed.public_key()}
    m, _ = open_candidate_file(blob, bytes.fromhex(vec["release_key_hex"]), keys)
    ev = read_evaluation(vec["evaluation"].encode(), {"ward-0": site.public_key()}, "clinics",
                         4, m.adapter_sha256)
    assert ev.candidate.nll_sum == math.inf
    assert read_rejection(vec["rejection"].encode(), keys)["missing"] == ["ward-1"]


if __name__ == "__main__":
    VECTOR.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
