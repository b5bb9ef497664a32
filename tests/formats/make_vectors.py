"""Writes the golden vectors of tests/formats/vectors/ with the implementation.

Run once when a format changes on purpose (`python -m tests.formats.make_vectors`);
the tests check the files with decoders written from docs/formats/ alone,
and check that the implementation still reads them.  Random values
(ephemeral keys, nonces, salts) are recorded in the vectors, not re-made.
"""
from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from runtime.bundle.build import write_tar
from runtime.bundle.manifest import write_manifest
from runtime.events import RequestFinished
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.documents import SiteKit, seal_release_file
from runtime.federation.plan import RoundPlan, TrainerSettings, sign_plan
from runtime.federation.release import ReleaseManifest, sign_release
from runtime.federation.update_bundle import seal_update
from runtime.storage import audit as audit_mod
from runtime.storage.audit import AuditLog
from runtime.storage.keys import KeySource
from runtime.storage.store import Kind, SealedStore

OUT = Path(__file__).parent / "vectors"
_RAW_PRIV = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
             serialization.NoEncryption())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(name: str, doc: dict) -> None:
    (OUT / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def ed25519(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def x25519(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def update_vector() -> None:
    site, coordinator = ed25519(1), x25519(2)
    values = [0.5, -1.25, 3.0, 0.0625]     # exact in float32
    blob = seal_update(SiteUpdate("clinic-a", np.array(values, dtype=np.float32), 1234),
                       "clinics", 3, site, coordinator.public_key())
    write("update-v1.json", {
        "file": b64(blob), "site_signing_seed": b64(site.private_bytes(*_RAW_PRIV)),
        "coordinator_exchange_private": b64(coordinator.private_bytes(*_RAW_PRIV)),
        "expect": {"federation": "clinics", "round": 3, "site": "clinic-a", "tokens": 1234,
                   "values": values}})


def federation_vector() -> None:
    fed_key, site_exchange = ed25519(3), x25519(4)
    release_key = bytes(range(32))
    trainer = TrainerSettings(rank=4, steps=10, learning_rate=0.01, batch_tokens=256,
                              scheme="ffa", seed=7)
    plan = RoundPlan("clinics", 2, "ab" * 32, 1, 1.5, 0.8, 1795950000.0, False, trainer, 2)
    adapter = b"GGUF adapter bytes for the vector\n"
    manifest = ReleaseManifest("clinics", 2, 1, "ab" * 32, "", len(adapter),
                               "2026-12-01T00:00:00Z", {"epsilon": 1.5})
    write("federation-v1.json", {
        "federation_signing_seed": b64(fed_key.private_bytes(*_RAW_PRIV)),
        "plan_envelope": sign_plan(plan, fed_key).decode(),
        "site": "clinic-a",
        "site_exchange_private": b64(site_exchange.private_bytes(*_RAW_PRIV)),
        "sealed_release_key": SiteKit.seal_release_key(release_key, site_exchange.public_key(),
                                                       "clinic-a"),
        "release_key": b64(release_key),
        "release_file": b64(seal_release_file(sign_release(_with_digest(manifest, adapter),
                                                           fed_key), adapter, release_key)),
        "adapter": b64(adapter)})


def _with_digest(m: ReleaseManifest, adapter: bytes) -> ReleaseManifest:
    import dataclasses
    import hashlib

    return dataclasses.replace(m, adapter_sha256=hashlib.sha256(adapter).hexdigest())


def store_vectors() -> None:
    secret = b"vector key file secret, 32+ bytes long"
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        store = SealedStore.init(state, KeySource("key-file", "v", secret))
        store.put_bytes(Kind.KEY, "example", b"a data key's secret payload")
        row = store.catalog.get(Kind.KEY, "example")
        head = store.catalog.db.execute("SELECT kek_id, counter, prev, tables, mac FROM "
                                        "catalog_auth").fetchone()
        write("keyring-v1.json", {
            "key_file": secret.decode(), "keyring": json.loads((state / "keyring.json")
                                                               .read_text()),
            "object": {"id": row.id, "wrapped_dek": b64(row.wrapped_dek),
                       "sealed_meta": b64(row.sealed_meta)},
            "expect_meta": {"size": 27, "source": "", "suite": "AES_256_GCM"},
            "catalog_head": {"kek_id": head[0], "counter": head[1], "prev": head[2].hex(),
                             "tables": json.loads(head[3]), "mac": head[4].hex()}})

        audit_mod.CHECKPOINT_EVERY = 2
        log = AuditLog(store, content=True)
        log.start()
        for i, subject in enumerate(("patient-1", "patient-2", "patient-1")):
            log.record(RequestFinished(f"req-{i}", "ward", "uid:1000", "generate", "ok",
                                       "stop", 5, 7, 0, 0.01, 0.02, 0.03, subject=subject,
                                       content=(f"prompt {i}", f"answer {i}")))
        log.close()
        sid = log._subject_id("patient-1")
        anchor = store.catalog.db.execute("SELECT seq, head, log_size, sig FROM audit_state"
                                          ).fetchone()
        signing = store.read_bytes(Kind.KEY, "audit-signing")
        write("audit-v1.json", {
            "log": (state / "audit" / "log.jsonl").read_text(),
            "audit_key": b64(store.read_bytes(Kind.KEY, "audit-log")),
            "signing_public": b64(Ed25519PrivateKey.from_private_bytes(signing).public_key()
                                  .public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)),
            "subject": "patient-1", "subject_id": sid,
            "subject_key": b64(log._subject_key(sid, create=False) or b""),
            "anchor": {"seq": anchor[0], "head": anchor[1].hex(), "log_size": anchor[2],
                       "sig": b64(anchor[3])}})
        store.close()


def bundle_vector() -> None:
    key = ed25519(5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "hearth-bundle-0.1.0-cpu-cp311-linux_x86_64"
        (root / "wheelhouse").mkdir(parents=True)
        (root / "wheelhouse" / "a-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
        (root / "BUNDLE.json").write_text(json.dumps({"format": "hearth-bundle/1"}))
        fp = write_manifest(root, key)
        tar = Path(tmp) / "b.tar"
        write_tar(root, tar)
        write("bundle-v1.json", {"tar": b64(tar.read_bytes()), "fingerprint": fp})


def report_vector() -> None:
    """A small report.json as `hearth report` writes it for a store with no
    audit log: the key block first, then the content (build_report's field
    order), encoded and signed by the implementation."""
    from runtime.transparency.report import missing
    from runtime.transparency.report_sign import encode, key_block, sign

    key = ed25519(7)
    doc = {"schema": "hearth-report/1", "signing_key": key_block(key.public_key()),
           "generated": "2026-12-02T00:00:00Z",
           "period": {"since": "the log's start", "until": "2026-12-02T00:00:00Z"},
           "drift": {"alarms": [], "alarm_reports": [], "references": [],
                     "rounds_triggered": [{
                         "federation": "clinics", "version": 4, "round": 4,
                         "created": "2026-12-01T06:00:00Z", "applied": True,
                         "sites": ["clinic-a", "clinic-b"], "signals": {"nll": 2.5e-07},
                         "this_site_alarmed": True}],
                     "trigger_unknown": [3]},
           "audit_chain": missing("serve with a master key: the audit log is on whenever a "
                                  "key is given"),
           "operator": {"provider": {"status": "provided", "text": "Klinikum Süd — Ärzte"}}}
    data = encode(doc)
    write("report-v1.json", {"report_json": data.decode("utf-8"),
                             "report_json_sig": sign(data, key).decode("ascii"),
                             "fingerprint": key_block(key.public_key())["fingerprint"]})


def site_report_vector() -> None:
    from runtime.federation.reports import ReportKind, SiteReport, sign_report

    key = ed25519(8)
    report = SiteReport("clinics", "clinic-a", ReportKind.DRIFT_ALARM, "cd" * 32, 2,
                        1795950000.25, {"nll": 2.5e-07, "prompt_length": 0.5},
                        "Überwachung: 200 requests in the window")
    write("site-report-v1.json", {
        "envelope": sign_report(report, key).decode("utf-8"),
        "site_public": b64(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)),
        "coordinator": {"federation": "clinics", "base_model_sha256": "cd" * 32,
                        "now": 1795950600.0, "max_age_s": 86400.0}})


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    update_vector()
    federation_vector()
    store_vectors()
    bundle_vector()
    report_vector()
    site_report_vector()
