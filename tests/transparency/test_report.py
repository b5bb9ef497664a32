"""`hearth report` on a state directory that served requests and applied a
federated release; `hearth report verify`; what the report never holds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.transparency.report import ART13_3, summarize_audit
from tests.integration.conftest import start_daemon
from tests.integration.test_federation import air_gapped_round, federation

MARKER = "zebra-quartz-prompt-7731"      # a prompt text that must appear nowhere
HOSTILE = "<script>alert('x')</script> & Co"


def hearth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
           ) -> tuple[Path, list[str], Path]:
    """A site's state directory: release v1 applied, then a daemon with the
    federation's adapter served requests (content logging on), then
    `hearth report`.  Returns (report dir, state options, config)."""
    root = tmp_path_factory.mktemp("report")
    coordinator, (site,) = federation(root, tiny_model)
    release = air_gapped_round(coordinator, site, root / "media")
    assert site.json("fed", "import-release", release)["version"] == 1
    config = root / "hearth.toml"
    config.write_text(f'''
[server]
listen = ["127.0.0.1:0", "unix:{root}/h.sock"]

[models.tiny]
path = "{tiny_model}"
n_ctx = 2048
n_parallel = 2
threads = 1

[models.tiny.adapters]
fed-clinics = "store:fed-clinics"

[report]
provider = {json.dumps(HOSTILE)}
contact = "ai-officer@example.org"
intended_purpose = "Drafting discharge letters for review by a physician."
human_oversight = "Every draft is read and signed by the treating physician."
''')
    d = start_daemon(["--config", str(config), "--audit-content", *site.opts], root)
    try:
        with d.client() as c:
            for i in range(3):
                list(c.generate(f"{MARKER} {i}", max_tokens=4, temperature=0.0,
                                adapter="fed-clinics"))
    finally:
        assert d.stop() == 0, d.log()
    out = root / "out"
    made = hearth("report", "--out", str(out), "--config", str(config), *site.opts)
    assert made.returncode == 0, made.stderr
    return out, site.opts, config


def test_the_report_has_all_four_files_and_what_the_state_holds(
        served: tuple[Path, list[str], Path]) -> None:
    """Checked that it can fail: with the release's lineage lookup keyed on
    the wrong digest the adapter's lineage is a string and the lineage
    assertion fails; without the model-load subscription in daemon.py the
    change log has no model.ready."""
    out, _, _ = served
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "report.html",
                                                     "report.json", "report.json.sig"]
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == "hearth-report/1"
    assert doc["usage"]["requests"] >= 3 and doc["usage"]["by_model"]["tiny"] >= 3
    (model,) = doc["appliance"]["models"]
    assert model["name"] == "tiny" and len(model["sha256"]) == 64
    (release,) = doc["federation"]["releases"]
    assert release["version"] == 1 and release["applied"] and release["sites"] == 1
    assert release["round"] == 1
    adapter = next(a for a in doc["appliance"]["adapters"] if a["name"] == "fed-clinics")
    assert adapter["lineage"][0]["version"] == 1
    actions = [c["action"] for c in doc["change_log"]]
    assert "federation.release_applied" in actions and "model.ready" in actions
    # Energy accounting is on by default; with no counters on this machine
    # every figure is an estimate, and the report says so.
    assert doc["energy"]["status"] == "measured"
    assert doc["energy"]["requests_measured"] >= 3
    assert set(doc["energy"]["sources"]) <= {"estimate", "rapl", "nvml"}
    assert doc["logs"]["retention_days"] == 183 and doc["logs"]["content_logged_records"] >= 3
    assert doc["audit_chain"]["verified"] is True and len(doc["audit_chain"]["head"]) == 64


def test_every_art13_item_is_present_or_marked_missing(served: tuple[Path, list[str], Path]
                                                       ) -> None:
    """Fields the operator left out are missing, never filled in.  Checked
    that it can fail: with operator_text returning "" for unset fields the
    status check fails."""
    out, _, _ = served
    doc = json.loads((out / "report.json").read_text())
    items = {i["item"]: i for i in doc["art13_3"]}
    assert list(items) == [item for item, _, _ in ART13_3]
    assert {"a", "b.i", "b.ii", "b.iii", "b.iv", "b.v", "b.vi", "b.vii", "c", "d", "e",
            "f"} == set(items)
    for item in items.values():
        assert item["status"] in ("present", "partial", "missing")
        assert (item["status"] == "present") == (not item["missing"])
    assert items["a"]["status"] == "present" and items["d"]["status"] == "present"
    assert items["f"]["status"] == "present"
    assert items["b.iii"]["status"] == "missing"        # the operator gave no misuse text
    assert doc["operator"]["out_of_scope_uses"] == {
        "status": "missing", "how": "set [report] out_of_scope_uses in hearth.toml"}
    assert doc["operator"]["contact"]["text"] == "ai-officer@example.org"


def test_no_prompt_or_completion_in_any_file(served: tuple[Path, list[str], Path]) -> None:
    """The requests were logged with their content; the report holds counts
    only.  Checked that it can fail: putting the audit entries' content into
    the usage section makes the marker appear."""
    out, _, _ = served
    for f in out.iterdir():
        assert MARKER not in f.read_text(errors="replace"), f.name


def test_html_and_model_card_are_escaped_and_self_contained(
        served: tuple[Path, list[str], Path]) -> None:
    out, _, _ = served
    page = (out / "report.html").read_text()
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "src=" not in page and "@import" not in page and "url(" not in page
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["model_name"] == "tiny" and "hearth" in meta["tags"] and "license" not in meta
    digest = __import__("hashlib").sha256((out / "report.json").read_bytes()).hexdigest()
    assert meta["hearth_report_sha256"] == digest
    for section in ("## Model Details", "## Uses", "### Out-of-Scope Use",
                    "## Bias, Risks, and Limitations", "## Training Details", "## Evaluation",
                    "## Environmental Impact", "## Model Card Contact"):
        assert section in card
    assert "**missing** (set [report] license" in card


def test_verify_passes_and_fails_after_any_changed_byte(served: tuple[Path, list[str], Path],
                                                       tmp_path: Path) -> None:
    """SECURITY-CASES 34: a report changed after signing is refused.  Checked that it
    can fail: with verify_report's public.verify call removed, the copies
    whose JSON still parses (flips inside a value) pass."""
    out, opts, _ = served
    ok = hearth("report", "verify", str(out), *opts)
    assert ok.returncode == 0, ok.stderr
    fingerprint = json.loads((out / "report.json").read_text())["signing_key"]["fingerprint"]
    assert fingerprint in ok.stdout
    state = opts[opts.index("--state-dir") + 1]
    pinned = hearth("report", "verify", str(out), "--state-dir", state,
                    "--fingerprint", fingerprint)
    assert pinned.returncode == 0, pinned.stderr
    unpinned = hearth("report", "verify", str(out), "--state-dir", state)
    assert unpinned.returncode != 0 and "--fingerprint" in unpinned.stderr
    data = (out / "report.json").read_bytes()
    for position in (0, 17, len(data) // 3, len(data) // 2, len(data) - 2):
        bad = tmp_path / f"flip-{position}"
        bad.mkdir()
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        (bad / "report.json").write_bytes(bytes(flipped))
        (bad / "report.json.sig").write_bytes((out / "report.json.sig").read_bytes())
        for args in (opts, ["--state-dir", state, "--fingerprint", fingerprint]):
            r = hearth("report", "verify", str(bad), *args)
            assert r.returncode != 0, (position, r.stdout)
            assert "report.json" in r.stderr, r.stderr


def test_verify_needs_the_log_the_report_names(served: tuple[Path, list[str], Path],
                                               tmp_path: Path) -> None:
    """SECURITY-CASES 34: shown with another appliance's log (made under
    another audit key than the signed report names), verify fails."""
    out, _, _ = served
    other = ["--state-dir", str(tmp_path / "other"), "--key-file", str(tmp_path / "other.key")]
    assert hearth("keys", "init", *other).returncode == 0
    assert hearth("audit", "prune", *other).returncode == 0      # starts a log there
    fingerprint = json.loads((out / "report.json").read_text())["signing_key"]["fingerprint"]
    r = hearth("report", "verify", str(out), "--state-dir", other[1], "--fingerprint",
               fingerprint)
    assert r.returncode != 0 and "the audit log does not verify" in r.stderr, r.stderr


def test_a_signed_report_naming_a_head_the_log_lacks_fails(tmp_path: Path) -> None:
    """SECURITY-CASES 34: even correctly signed, a report whose chain head is
    not in the log is refused.  Checked that it can fail: with _log_has
    returning True the verify passes."""
    from runtime.errors import IntegrityError
    from runtime.storage.audit import AuditLog
    from runtime.storage.keys import KeySource
    from runtime.storage.store import SealedStore
    from runtime.transparency.report_sign import (
        encode,
        key_block,
        report_signer,
        sign,
        verify_report,
    )

    store = SealedStore.init(tmp_path / "state", KeySource("key-file", "t", b"e" * 32))
    try:
        audit = AuditLog(store)
        audit.record_admin("model.ready", {"model": "m", "state": "ready", "error": ""})
        signer = report_signer(store)
        for head, ok in ((audit.head.hex(), True), ("00" * 32, False)):
            doc = {"schema": "hearth-report/1", "signing_key": key_block(signer.public_key()),
                   "audit_chain": {"seq": audit.seq, "head": head,
                                   "signing_key_fingerprint": audit.fingerprint()}}
            out = tmp_path / head[:8]
            out.mkdir()
            (out / "report.json").write_bytes(encode(doc))
            (out / "report.json.sig").write_bytes(sign(encode(doc), signer))
            if ok:
                assert verify_report(out, store.state_dir, store=store).audit_seq == audit.seq
            else:
                with pytest.raises(IntegrityError, match="not bound to this log"):
                    verify_report(out, store.state_dir, store=store)
    finally:
        store.close()


def test_energy_is_read_when_the_records_carry_it() -> None:
    """The energy helper's per-request fields, when present, are summed."""
    from runtime.transparency.report import energy
    records = [{"type": "request", "model": "m", "status": "ok", "prompt_tokens": 10,
                "completion_tokens": 30, "client": "c", "time": 1.0,
                "energy_joules": 2.0, "energy_source": "rapl"},
               {"type": "request", "model": "m", "status": "ok", "prompt_tokens": 10,
                "completion_tokens": 30, "client": "c", "time": 2.0}]
    e = energy(summarize_audit(records))
    assert e["status"] == "measured" and e["total_joules"] == 2.0
    assert e["sources"] == {"rapl": 1} and e["joules_per_token"] == pytest.approx(2.0 / 40)
    assert energy(summarize_audit(records[1:]))["status"] == "not measured"


def test_a_report_still_verifies_after_its_records_are_shredded(tmp_path: Path) -> None:
    """Retention destroys day keys, not the chain: a report made before a
    prune still verifies after it.  Checked that it can fail: a prune that
    rewrote the shredded lines (instead of destroying keys) breaks the log
    and the second verify fails."""
    from runtime.cli.main import main
    from runtime.storage.audit import DAY_S, AuditLog
    from runtime.storage.keys import KeySource
    from runtime.storage.store import SealedStore

    key = KeySource("key-file", "t", b"d" * 32)
    state = tmp_path / "state"
    store = SealedStore.init(state, key)
    audit = AuditLog(store)
    audit.clock = lambda: __import__("time").time() - 400 * DAY_S
    audit.record_admin("model.ready", {"model": "old", "state": "ready", "error": ""})
    store.close()
    keyfile = tmp_path / "k"
    keyfile.write_bytes(key.secret)
    keyfile.chmod(0o600)
    opts = ["--state-dir", str(state), "--key-file", str(keyfile)]
    assert main(["report", "--out", str(tmp_path / "out"), "--no-doctor", *opts]) == 0
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["action"] for c in doc["change_log"]] == ["model.ready"]
    assert main(["report", "verify", str(tmp_path / "out"), *opts]) == 0
    assert main(["audit", "prune", *opts]) == 0
    assert main(["report", "verify", str(tmp_path / "out"), *opts]) == 0
    assert main(["report", "--out", str(tmp_path / "after"), "--no-doctor", *opts]) == 0
    after = json.loads((tmp_path / "after" / "report.json").read_text())
    assert after["logs"]["records_shredded"] >= 1
    assert "model.ready" not in [c["action"] for c in after["change_log"]]
    assert "audit.retention" in [c["action"] for c in after["change_log"]]
