"""Golden vectors for every format in docs/formats/, each checked twice: by a
small decoder written from the spec page alone (cryptography, hashlib, json,
struct, tarfile; nothing from runtime/), and by the implementation, which
must still read it.  sealed-v1 has its own spec decoder in
tests/storage/test_sealed.py; release-v1's vector lives with the federation
tests, gate-v1's in tests/federation/test_gate_vectors.py.  The vectors are
written by tests/formats/make_vectors.py.

How these can fail: each was run with one spec detail changed and failed
(update-v1's HKDF info, audit-v1's hash input order and anchor message,
federation-v1's kit salt without the site, keyring-v1's wrap AAD without the
key id, bundle-v1's folder rule); at e3a5e70 the update-v1, keyring-v1, audit-v1, federation-v1 and
bundle-v1 vectors did not exist, and release-v1 and audit-v1 were checked
only by the implementation that made them (issue 18 item 6).  report-v1 and
site-report-v1 (hearth-site-report/1) were added with their vectors: at
ebfc9c9 neither had one, and site-report-v1 had no page; each test's
docstring says which spec detail, changed, made it fail."""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = Path(__file__).parent


def vector(name: str) -> dict[str, Any]:
    return dict(json.loads((HERE / "vectors" / name).read_text()))


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def canonical(doc: object) -> bytes:
    """release-v1.md: keys sorted, `,` and `:` without white space, UTF-8
    without escaping non-ASCII."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fingerprint(public: Ed25519PublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex."""
    return hashlib.sha256(public.public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
                          ).hexdigest()


def raw(public: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---- update-v1 ----------------------------------------------------------------------------

def spec_open_update(blob: bytes, coordinator: X25519PrivateKey, site: Ed25519PublicKey
                     ) -> tuple[dict[str, Any], tuple[float, ...]]:
    magic = b"HEARTH-UPDATE-1\n"
    assert blob[:16] == magic
    (n,) = struct.unpack(">I", blob[16:20])
    assert n <= 64 << 10
    header = blob[20:20 + n]
    h = json.loads(header)
    assert canonical(h) == header
    assert set(h) == {"format", "federation", "round", "site", "tokens", "size", "coordinator",
                      "ephemeral"} and h["format"] == "hearth-update/1"
    site.verify(blob[-64:], blob[:-64])
    assert h["coordinator"] == hashlib.sha256(raw(coordinator.public_key())).hexdigest()
    ephemeral = X25519PublicKey.from_public_bytes(unb64(h["ephemeral"]))
    key = hkdf(coordinator.exchange(ephemeral), hashlib.sha256(header).digest(),
               b"hearth-update/1")
    plain = AESGCM(key).decrypt(b"\0" * 12, blob[20 + n:-64], blob[:20 + n])
    assert h["tokens"] > 0 and len(plain) == 4 * h["size"]
    return h, struct.unpack(f"<{h['size']}f", plain)


def test_update_v1() -> None:
    v = vector("update-v1.json")
    blob = unb64(v["file"])
    site = Ed25519PrivateKey.from_private_bytes(unb64(v["site_signing_seed"])).public_key()
    coordinator = X25519PrivateKey.from_private_bytes(unb64(v["coordinator_exchange_private"]))
    header, values = spec_open_update(blob, coordinator, site)
    e = v["expect"]
    assert (header["federation"], header["round"], header["site"], header["tokens"]) == \
        (e["federation"], e["round"], e["site"], e["tokens"])
    assert list(values) == e["values"]

    from runtime.federation.update_bundle import UpdateInbox

    inbox = UpdateInbox(e["federation"], e["round"], coordinator, {e["site"]: site},
                        len(e["values"]))
    assert inbox.open_update(blob).delta.tolist() == e["values"]


# ---- audit-v1 -----------------------------------------------------------------------------

def test_audit_v1() -> None:
    v = vector("audit-v1.json")
    audit_key, public = unb64(v["audit_key"]), Ed25519PublicKey.from_public_bytes(
        unb64(v["signing_public"]))
    prev, records, seq = b"\0" * 32, [], 0
    for seq, text in enumerate(v["log"].splitlines(), start=1):
        d = json.loads(text)
        ct = unb64(d["ct"])
        assert d["seq"] == seq and bytes.fromhex(d["prev"]) == prev
        digest = hashlib.sha256(b"hearth-audit-v1" + u64(seq) + struct.pack(">d", d["ts"])
                                + d["type"].encode() + b"\0" + prev + ct).digest()
        assert digest.hex() == d["hash"]
        if d["type"] == "checkpoint":
            body = json.loads(ct)
            assert body["seq"] == seq - 1 and bytes.fromhex(body["head"]) == prev
            public.verify(unb64(body["sig"]), b"hearth-audit-checkpoint-v1" + u64(body["seq"])
                          + prev)
        else:
            assert d["type"] in ("genesis", "request", "admin")
            records.append((seq, d["type"], json.loads(AESGCM(audit_key).decrypt(
                ct[:12], ct[12:], u64(seq)))))
        prev = digest
    anchor = v["anchor"]
    assert (anchor["seq"], anchor["head"], anchor["log_size"]) == \
        (seq, prev.hex(), len(v["log"].encode()))
    public.verify(unb64(anchor["sig"]), b"hearth-audit-anchor-v1" + u64(seq) + prev
                  + u64(anchor["log_size"]))
    assert records[0][1] == "genesis" and records[0][2]["genesis"] is True
    requests = [r for r in records if r[1] == "request"]
    assert [r[2]["request_id"] for r in requests] == ["req-0", "req-1", "req-2"]
    # the subject's content, under its own key
    sid = v["subject_id"]
    assert sid == hmac.digest(audit_key, v["subject"].encode(), "sha256")[:16].hex()
    mine = [(s, r["content"]) for s, _, r in requests if r["content"]["subject_id"] == sid]
    assert len(mine) == 2
    for s, content in mine:
        blob = unb64(content["ct"])
        plain = json.loads(AESGCM(unb64(v["subject_key"])).decrypt(blob[:12], blob[12:],
                                                                   u64(s) + sid.encode()))
        assert plain["subject"] == v["subject"] and plain["prompt"].startswith("prompt ")

    from runtime.storage.audit_verify import verify_lines

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        log.write_text(v["log"])
        assert verify_lines(log, public, (anchor["seq"], prev)) == (seq, prev, None)


# ---- keyring-v1 ---------------------------------------------------------------------------

def test_keyring_v1() -> None:
    v = vector("keyring-v1.json")
    keyring = v["keyring"]
    assert keyring["format"] == "hearth-keyring/1"
    (entry,) = keyring["keks"]
    assert entry["id"] == keyring["active"] and re.fullmatch(r"k-[0-9a-f]{12}", entry["id"])
    assert entry["source"] == "key-file" and entry["kdf"] == {"name": "hkdf-sha256"}
    kek = hkdf(v["key_file"].strip().encode(), unb64(entry["salt"]), b"hearth/kek/v1")
    assert hmac.digest(kek, b"hearth keyring check v2 (authenticated catalog)", "sha256") == \
        unb64(entry["check"])
    obj = v["object"]
    wrapped = unb64(obj["wrapped_dek"])
    dek = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:],
                              f"hearth/dek/v1|{entry['id']}|{obj['id']}".encode())
    sealed = unb64(obj["sealed_meta"])
    meta = json.loads(AESGCM(hkdf(dek, None, b"hearth/catalog-meta/v1")).decrypt(
        sealed[:12], sealed[12:], obj["id"].encode()))
    assert {k: meta[k] for k in v["expect_meta"]} == v["expect_meta"]
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
    # the catalog's authentication head, under the key derived for it
    head = v["catalog_head"]
    body = canonical({k: head[k] for k in ("counter", "kek_id", "prev", "tables")})
    mac_key = hkdf(kek, None, b"hearth/catalog-mac/v1")
    assert hmac.digest(mac_key, b"hearth/catalog-head/v1\n" + body, "sha256").hex() == \
        head["mac"]

    from runtime.storage.keys import Keyring, KeySource

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "keyring.json").write_text(json.dumps(keyring))
        master = Keyring(Path(tmp)).unlock(KeySource("key-file", "v", v["key_file"].encode()))
        assert master.id == entry["id"] and master.unwrap(wrapped, obj["id"]) == dek
        assert master.catalog_key().key == mac_key


# ---- federation-v1 and release-v1 ------------------------------------------------------------

def spec_open_envelope(envelope: bytes, trusted: Ed25519PublicKey) -> dict[str, Any]:
    env = json.loads(envelope)
    assert set(env) == {"manifest", "signature", "key"}
    assert env["key"] == fingerprint(trusted)
    text = env["manifest"].encode("utf-8")
    trusted.verify(unb64(env["signature"]), text)
    doc = json.loads(text)
    assert canonical(doc) == text
    return dict(doc)


RELEASE_MEMBERS = {"format", "federation", "version", "parent_version", "base_model_sha256",
                   "adapter_sha256", "adapter_bytes", "created", "metrics"}


def spec_check_release(m: dict[str, Any], adapter: bytes) -> None:
    assert set(m) - {"trigger"} == RELEASE_MEMBERS and m["format"] == "hearth-release/1"
    if "trigger" in m:                  # optional: why the release's round started
        t = m["trigger"]
        assert set(t) == {"kind", "sites", "signals"}
        assert t["kind"] in ("schedule", "daily", "drift", "manual")
        assert t["sites"] == sorted(set(t["sites"])) and (t["kind"] == "drift") == bool(
            t["sites"])
        assert all(0 <= p <= 1 for p in t["signals"].values())
        assert t["kind"] == "drift" or not t["signals"]
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", m["federation"])
    assert type(m["version"]) is int and m["version"] >= 1
    assert type(m["parent_version"]) is int and 0 <= m["parent_version"] < m["version"]
    assert re.fullmatch(r"[0-9a-f]{64}", m["base_model_sha256"])
    assert m["adapter_sha256"] == hashlib.sha256(adapter).hexdigest()
    assert m["adapter_bytes"] == len(adapter) > 0
    assert all(isinstance(x, int | float) and not isinstance(x, bool)
               for x in m["metrics"].values())


def test_release_v1() -> None:
    v = json.loads((HERE.parent / "federation" / "vectors" / "release-v1.json").read_text())
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["private_key_seed_hex"]))
    m = spec_open_envelope(v["envelope"].encode(), key.public_key())
    spec_check_release(m, unb64(v["adapter_b64"]))
    assert m["base_model_sha256"] == v["base_model_sha256"] and "trigger" not in m
    m4 = spec_open_envelope(v["envelope_drift_trigger"].encode(), key.public_key())
    spec_check_release(m4, unb64(v["adapter_b64"]))
    assert m4["trigger"]["kind"] == "drift" and m4["trigger"]["sites"] == ["clinic-a",
                                                                           "clinic-b"]


def test_federation_v1() -> None:
    v = vector("federation-v1.json")
    fed = Ed25519PrivateKey.from_private_bytes(unb64(v["federation_signing_seed"])).public_key()
    plan = spec_open_envelope(v["plan_envelope"].encode(), fed)
    assert set(plan) == {"format", "federation", "round", "base_model_sha256", "adapter_version",
                         "clip_norm", "noise_multiplier", "deadline", "secure_aggregation",
                         "min_sites", "trainer"}
    assert plan["format"] == "hearth-round-plan/1" and plan["round"] >= 1
    assert plan["clip_norm"] > 0 and plan["noise_multiplier"] >= 0 and plan["min_sites"] >= 1
    assert set(plan["trainer"]) == {"rank", "steps", "learning_rate", "batch_tokens", "scheme",
                                    "seed"} and plan["trainer"]["scheme"] in ("ffa", "fedavg")
    # the site kit's sealed release key
    site = v["site"]
    exchange = X25519PrivateKey.from_private_bytes(unb64(v["site_exchange_private"]))
    sealed = unb64(v["sealed_release_key"])
    e = sealed[:32]
    key = hkdf(exchange.exchange(X25519PublicKey.from_public_bytes(e)),
               hashlib.sha256(e + site.encode()).digest(), b"hearth-site-kit/1")
    release_key = AESGCM(key).decrypt(b"\0" * 12, sealed[32:], site.encode())
    assert release_key == unb64(v["release_key"])
    # the release file
    blob = unb64(v["release_file"])
    assert blob[:16] == b"HEARTH-RELEASE-1"
    (n,) = struct.unpack(">I", blob[16:20])
    envelope = blob[20:20 + n]
    adapter = AESGCM(release_key).decrypt(blob[20 + n:32 + n], blob[32 + n:], blob[:20 + n])
    assert adapter == unb64(v["adapter"])
    spec_check_release(spec_open_envelope(envelope, fed), adapter)

    from runtime.federation.documents import open_release_file
    from runtime.federation.plan import RoundPlan
    from runtime.federation.release import open_envelope

    assert open_release_file(blob, release_key) == (envelope, adapter)
    text = open_envelope(v["plan_envelope"].encode(), {fingerprint(fed): fed}, "plan")
    assert json.loads(text)["round"] == plan["round"]
    assert RoundPlan.__dataclass_fields__.keys() == plan.keys()


# ---- bundle-v1 --------------------------------------------------------------------------------

def spec_verify_bundle(data: bytes, trusted: str) -> dict[str, str]:
    files: dict[str, bytes] = {}
    folders: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        top = members[0].name
        assert re.fullmatch(r"hearth-bundle-[A-Za-z0-9_.+-]+", top) and members[0].isdir()
        for m in members[1:]:
            assert m.name.startswith(top + "/") and ".." not in m.name.split("/")
            rel = m.name[len(top) + 1:]
            if m.isdir():
                folders.add(rel)
            else:
                assert m.isfile()
                f = tar.extractfile(m)
                assert f is not None
                files[rel] = f.read()
    public = serialization.load_pem_public_key(files.pop("signing-key.pem"))
    assert isinstance(public, Ed25519PublicKey) and fingerprint(public) == trusted
    manifest = files.pop("MANIFEST")
    public.verify(files.pop("MANIFEST.sig"), manifest)
    entries: dict[str, str] = {}
    for line in manifest.decode("ascii").splitlines():
        digest, name = re.fullmatch(r"([0-9a-f]{64})  (\S(?:.*\S)?)", line).groups()  # type: ignore[union-attr]
        assert not name.startswith("/") and all(p not in ("", ".", "..")
                                                 for p in name.split("/"))
        assert name not in entries
        entries[name] = digest
    assert list(entries) == sorted(entries)
    assert set(files) == set(entries)
    assert all(hashlib.sha256(files[n]).hexdigest() == d for n, d in entries.items())
    needed = {"/".join(n.split("/")[:i]) for n in entries for i in range(1, n.count("/") + 1)}
    assert folders == needed
    return entries


def test_bundle_v1(tmp_path: Path) -> None:
    v = vector("bundle-v1.json")
    data = unb64(v["tar"])
    entries = spec_verify_bundle(data, v["fingerprint"])
    assert set(entries) == {"BUNDLE.json", "wheelhouse/a-1.0-py3-none-any.whl"}

    from runtime.bundle.build import unpack
    from runtime.bundle.manifest import verify_bundle

    (tmp_path / "b.tar").write_bytes(data)
    root = unpack(tmp_path / "b.tar", tmp_path / "out")
    assert verify_bundle(root, [v["fingerprint"]]) == entries


# ---- report-v1 --------------------------------------------------------------------------------

def spec_verify_report(data: bytes, sig_file: bytes, trusted: str) -> dict[str, Any]:
    """report-v1.md's verification without a store: the key pinned by its
    fingerprint, the signature over the exact bytes, the schema and key
    block; the audit step only when `audit_chain` names a record."""
    assert sig_file.endswith(b"\n")
    sig = base64.b64decode(sig_file.strip(), validate=True)
    assert len(sig) == 64
    doc = json.loads(data.decode("utf-8"))
    block = doc["signing_key"]
    public = Ed25519PublicKey.from_public_bytes(unb64(block["public_key"]))
    assert fingerprint(public) == trusted
    public.verify(sig, data)
    assert doc["schema"] == "hearth-report/1"
    assert block == {"algorithm": "Ed25519", "public_key": block["public_key"],
                     "fingerprint": trusted, "signature_file": "report.json.sig"}
    # the writing rule: indent 2, members in the writer's order, non-ASCII as itself, `\n`
    assert data == (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    assert "seq" not in doc["audit_chain"] and doc["audit_chain"]["status"] == "missing"
    return dict(doc)


def _report_files(tmp: Path, data: bytes, sig: bytes) -> Path:
    (tmp / "report.json").write_bytes(data)
    (tmp / "report.json.sig").write_bytes(sig)
    return tmp


def test_report_v1(tmp_path: Path) -> None:
    """Checked by making the spec decoder hash the raw 32 key bytes instead
    of the DER SubjectPublicKeyInfo (fails: fingerprint), and by writing
    with ensure_ascii=True (fails: the writing rule)."""
    v = vector("report-v1.json")
    data, sig = v["report_json"].encode("utf-8"), v["report_json_sig"].encode("ascii")
    doc = spec_verify_report(data, sig, v["fingerprint"])
    assert doc["operator"]["provider"]["text"] == "Klinikum Süd — Ärzte"
    # drift.rounds_triggered: the releases whose manifest's trigger is "drift"
    (r,) = doc["drift"]["rounds_triggered"]
    assert set(r) == {"federation", "version", "round", "created", "applied", "sites",
                      "signals", "this_site_alarmed"}
    assert r["sites"] == sorted(set(r["sites"])) and all(0 <= p <= 1
                                                          for p in r["signals"].values())
    assert all(type(n) is int for n in doc["drift"]["trigger_unknown"])

    from runtime.transparency.report_sign import verify_report

    verdict = verify_report(_report_files(tmp_path, data, sig), tmp_path / "no-state",
                            fingerprint=v["fingerprint"])
    assert (verdict.fingerprint, verdict.audit_seq) == (v["fingerprint"], 0)


@pytest.mark.parametrize("change", ["re-encoded", "re-indented", "other key pinned"])
def test_report_v1_changed_is_refused_by_both(tmp_path: Path, change: str) -> None:
    """The signature covers the exact bytes: the same content written
    otherwise, or a key other than the pinned one, fails both verifiers."""
    v = vector("report-v1.json")
    data, sig, trusted = v["report_json"].encode(), v["report_json_sig"].encode(), \
        v["fingerprint"]
    doc = json.loads(data)
    if change == "re-encoded":
        data = (json.dumps(doc, indent=2) + "\n").encode()
    elif change == "re-indented":
        data = (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()
    else:
        trusted = fingerprint(Ed25519PrivateKey.from_private_bytes(b"\x09" * 32).public_key())
    with pytest.raises((AssertionError, InvalidSignature)):
        spec_verify_report(data, sig, trusted)

    from runtime.errors import IntegrityError
    from runtime.transparency.report_sign import verify_report

    with pytest.raises(IntegrityError):
        verify_report(_report_files(tmp_path, data, sig), tmp_path / "no-state",
                      fingerprint=trusted)


# ---- site-report-v1 -----------------------------------------------------------------------------

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}


def spec_number(x: float) -> str:
    """site-report-v1.md's number rule: the fewest significant digits that
    read back as the same double; positional with at least one fraction
    digit when the decimal exponent is in [-4, 16), else `d[.ddd]e±XX`."""
    assert x == x and abs(x) != float("inf")
    for places in range(17):
        text = f"{abs(x):.{places}e}"
        if float(text) == abs(x):
            break
    mantissa, exp = text.split("e")
    digits, e = mantissa.replace(".", "").rstrip("0") or "0", int(exp)
    sign = "-" if x < 0 or (x == 0 and str(x).startswith("-")) else ""
    if -4 <= e < 16:
        if e >= 0:
            whole, frac = digits[:e + 1].ljust(e + 1, "0"), digits[e + 1:]
        else:
            whole, frac = "0", "0" * (-e - 1) + digits
        return f"{sign}{whole}.{frac or '0'}"
    rest = f".{digits[1:]}" if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{rest}e{'-' if e < 0 else '+'}{abs(e):02d}"


def spec_string(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(c, f"\\u{ord(c):04x}" if c < " " else c)
                         for c in text) + '"'


def spec_canonical(value: object) -> str:
    """Canonical JSON written from the page: members sorted by name, no
    white space, integers in decimal, numbers by spec_number, strings with
    only `"`, `\\` and control characters escaped."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{spec_string(k)}:{spec_canonical(value[k])}"
                              for k in sorted(value)) + "}"
    if isinstance(value, str):
        return spec_string(value)
    if isinstance(value, bool):
        raise AssertionError("no booleans in a site report")
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, float)
    return spec_number(value)


def spec_accept_site_report(envelope: bytes, sites: dict[str, Ed25519PublicKey],
                            federation: str, base_model_sha256: str, now: float,
                            max_age_s: float) -> dict[str, Any]:
    """site-report-v1.md's acceptance, in its order; AssertionError on refusal."""
    env = json.loads(envelope)
    assert set(env) == {"manifest", "signature", "key"}
    by_fp = {fingerprint(k): k for k in sites.values()}
    signer = by_fp.get(env["key"])
    assert signer is not None, "signed by a key no enrolled site has"
    text = env["manifest"].encode("utf-8")
    signer.verify(unb64(env["signature"]), text)
    r = json.loads(text)
    assert set(r) == {"format", "federation", "site", "kind", "base_model_sha256",
                      "adapter_version", "raised_at", "p_values", "detail"}
    assert r["format"] == "hearth-site-report/1" and r["kind"] in ("drift_alarm", "rollback")
    assert NAME.fullmatch(r["federation"]) and NAME.fullmatch(r["site"])
    assert re.fullmatch(r"[0-9a-f]{64}", r["base_model_sha256"])
    assert type(r["adapter_version"]) is int and r["adapter_version"] >= 0
    assert type(r["raised_at"]) is float and isinstance(r["detail"], str)
    assert all(type(p) is float and 0.0 <= p <= 1.0 for p in r["p_values"].values())
    assert spec_canonical(r).encode("utf-8") == text, "not canonical"
    assert r["site"] in sites and fingerprint(sites[r["site"]]) == env["key"], \
        "another site's key signed it"
    assert r["federation"] == federation and r["base_model_sha256"] == base_model_sha256
    assert r["raised_at"] <= now + 300.0, "from the future"
    assert now - r["raised_at"] <= max_age_s, "too old"
    return dict(r)


def test_site_report_v1() -> None:
    """Checked by changing one rule in the spec code and seeing this fail:
    the positional range [-4, 16) as [-7, 16) (2.5e-07 came out
    0.00000025), the fingerprint over the raw key instead of the DER."""
    v = vector("site-report-v1.json")
    site = Ed25519PublicKey.from_public_bytes(unb64(v["site_public"]))
    c = v["coordinator"]
    envelope = v["envelope"].encode("utf-8")
    r = spec_accept_site_report(envelope, {"clinic-a": site}, c["federation"],
                                c["base_model_sha256"], c["now"], c["max_age_s"])
    assert r["p_values"] == {"nll": 2.5e-07, "prompt_length": 0.5}
    assert '"nll":2.5e-07' in json.loads(envelope)["manifest"]     # the exponent form
    assert r["detail"].startswith("Überwachung")

    from runtime.federation.reports import read_report

    report = read_report(envelope, {"clinic-a": site}, c["federation"],
                         c["base_model_sha256"], c["now"], c["max_age_s"])
    assert (report.site, report.kind.value, report.adapter_version, report.raised_at,
            report.p_values, report.detail) == (r["site"], r["kind"], r["adapter_version"],
                                                r["raised_at"], r["p_values"], r["detail"])
    assert report.canonical().decode("utf-8") == spec_canonical(r)


def test_spec_canonical_is_the_writers() -> None:
    """The number and string rules on the page are the ones the writer
    uses: both ends of the positional range, integral values, escapes.
    Checked with the range as [-4, 17) (1e16 then differed), with U+007F
    escaped, and with members in their given order (each then failed)."""
    for x in (0.0, 1.0, 0.5, 1e-4, 9.99e-5, 2.5e-07, 1e15, 1e16, 1.5e16, 123456.789,
              1795950000.25, 1795950000.0, 5e-324, 1.7976931348623157e308, -0.0, -3.25):
        assert spec_number(x) == json.dumps(x), x
    text = 'a"b\\c\nd\te\x01\x1f\x7f é — 𝄞'
    assert spec_string(text) == json.dumps(text, ensure_ascii=False)
    assert spec_canonical({"b": 1, "a": {"é": "x", "d": 0.5}}) == '{"a":{"d":0.5,"é":"x"},"b":1}'


_RAISED = 1795950000.25


@pytest.mark.parametrize("case, accepted", [
    ({}, True),
    ({"now": _RAISED + 86400.0}, True),            # exactly max_age_s old
    ({"now": _RAISED + 86401.0}, False),           # older
    ({"now": _RAISED - 300.0}, True),              # exactly the clock skew ahead
    ({"now": _RAISED - 300.5}, False),             # further in the future
    ({"federation": "clinics-b"}, False),
    ({"base_model_sha256": "ef" * 32}, False),
    ({"sites": "clinic-b"}, False),                # enrolled, but under another name
])
def test_site_report_v1_acceptance_agrees(case: dict[str, Any], accepted: bool) -> None:
    """The acceptance rules as the page states them and read_report agree,
    at the edges of the freshness window and the clock skew.  Checked by
    setting the spec's skew to 0 and making its age bound strict (one case
    each then differed)."""
    v = vector("site-report-v1.json")
    site = Ed25519PublicKey.from_public_bytes(unb64(v["site_public"]))
    c = {**v["coordinator"], **{k: x for k, x in case.items() if k != "sites"}}
    sites = {str(case.get("sites", "clinic-a")): site}
    envelope = v["envelope"].encode("utf-8")
    args = (envelope, sites, c["federation"], c["base_model_sha256"], c["now"], c["max_age_s"])

    from runtime.errors import FailedPrecondition
    from runtime.federation.release import UntrustedRelease
    from runtime.federation.reports import read_report

    if accepted:
        spec_accept_site_report(*args)
        read_report(*args)
    else:
        with pytest.raises(AssertionError):
            spec_accept_site_report(*args)
        with pytest.raises((FailedPrecondition, UntrustedRelease)):
            read_report(*args)


@pytest.mark.parametrize("label", [b"hearth/kek/v2", b"hearth/kek/v1 "])
def test_the_spec_decoders_can_fail(label: bytes) -> None:
    """A decoder that got one detail wrong fails on the vector."""
    v = vector("keyring-v1.json")
    entry = v["keyring"]["keks"][0]
    kek = hkdf(v["key_file"].strip().encode(), unb64(entry["salt"]), label)
    assert hmac.digest(kek, b"hearth keyring check v2 (authenticated catalog)", "sha256") != \
        unb64(entry["check"])
