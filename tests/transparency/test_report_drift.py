"""The report's drift section: the rounds the drift trigger started, from
the signed release manifests a site applied, beside the site's own alarms.

One coordinator and one site (ward-0) in this process.  Round 1 starts
because policy.decide fired the drift trigger on ward-0's alarm, round 2
because its schedule came; a third release is signed the way manifests
were before they recorded a trigger.  The site imports all three, has a
drift alarm and its report to the coordinator in its audit log, and
`hearth report` (the command, on the site's state directory) must list
round 1, and only round 1, as drift-triggered.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from runtime.config import CoordinatorConfig
from runtime.federation.coordinator import Published
from runtime.federation.documents import seal_release_file
from runtime.federation.policy import Alarm, decide
from runtime.federation.release import RoundTrigger, parse_manifest, sign_release
from runtime.federation.rounds import CoordinatorRounds, Delivery
from runtime.federation.site_loop import accept_site_plan
from runtime.federation.state import SiteContext, coordinator_keys
from runtime.storage.audit import AuditLog
from runtime.storage.store import SealedStore
from tests.federation.test_service_rounds import update_for
from tests.federation.test_site_loop import KEY, federation

P_NLL = 0.0001


def one_round(rounds: CoordinatorRounds, ctx: SiteContext, trigger: RoundTrigger | None
              ) -> tuple[Published, bytes]:
    """A round as the service opens it (with the policy's trigger), the
    site's update, and its release, signed and sealed."""
    assert trigger is not None
    plan, envelope = rounds.open(time.time(), resumable=False, trigger=trigger)
    accept_site_plan(ctx, envelope)
    rounds.take_update(Delivery(update_for(ctx, rounds, plan.round), "ward-0", "ward-0"))
    return rounds.close(time.time())


def untriggered_release(coordinator: SealedStore, published: Published) -> bytes:
    """The next version, signed as coordinators did before manifests
    recorded why a round started (no trigger member)."""
    signing, _, release_key = coordinator_keys(coordinator)
    m = dataclasses.replace(published.manifest, version=published.version + 1,
                            parent_version=published.version, trigger=None,
                            metrics={"round": 3.0, "sites": 1.0})
    envelope = sign_release(m, signing)
    assert "trigger" not in json.loads(json.loads(envelope)["manifest"])
    return seal_release_file(envelope, published.adapter, release_key)


def test_drift_triggered_rounds_in_the_manifest_and_the_report(tmp_path: Path,
                                                               tiny_model: Path) -> None:
    """Checked that it can fail, by edits run and reverted: without
    `trigger=r.trigger` in Coordinator.aggregate the release manifests
    carry no trigger (the first assertion fails); with the drift section
    counting every release that records a trigger, the schedule round
    (v2) is listed as drift-triggered; without passing `m.trigger` in
    runtime/cli/transparency.py every release reads "unknown" and
    rounds_triggered is empty."""
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=0.0)
    site = SealedStore.open(site_dir, KEY)
    ctx = SiteContext.open(site)
    try:
        rounds = CoordinatorRounds(coordinator)
        now = time.time()
        drift = decide(CoordinatorConfig(trigger_sites=1, trigger_window_s=600.0,
                                         min_interval_s=0.0), now, [],
                       [Alarm("ward-0", now - 1, {"prompt_nll": P_NLL})],
                       service_started=now - 60)
        assert drift.start
        first, blob1 = one_round(rounds, ctx, drift.trigger)
        # the signed manifest says why: the drift trigger, ward-0's alarm
        m1 = parse_manifest(json.loads(first.envelope)["manifest"].encode())
        assert m1.trigger == RoundTrigger("drift", ("ward-0",), {"prompt_nll": P_NLL})
        ctx.import_release(blob1)

        schedule = decide(CoordinatorConfig(every_s=60.0, min_interval_s=0.0), now + 120,
                          [now], [], service_started=now - 60)
        assert schedule.start
        second, blob2 = one_round(rounds, ctx, schedule.trigger)
        assert second.manifest.trigger == RoundTrigger("schedule")
        ctx.import_release(blob2)
        ctx.import_release(untriggered_release(coordinator, second))

        audit = AuditLog(site)
        audit.record_admin("drift_detected", {
            "model": "tiny", "version": "tiny+fed-clinics@1",
            "signals": {"prompt_nll": {"statistic": 4.2, "p_value": P_NLL}},
            "threshold": 0.001, "window": 200, "reference_size": 500, "observed": 900})
        audit.record_admin("federation.report_sent", {
            "federation": "clinics", "kind": "drift_alarm", "adapter_version": 0,
            "p_values": {"prompt_nll": P_NLL}})
    finally:
        site.close()
        coordinator.close()

    key_file = tmp_path / "site.key"
    key_file.write_bytes(KEY.secret)
    key_file.chmod(0o600)
    out = tmp_path / "report"
    made = subprocess.run([sys.executable, "-m", "runtime.cli.main", "report", "--out",
                           str(out), "--no-doctor", "--state-dir", str(site_dir),
                           "--key-file", str(key_file)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    doc = json.loads((out / "report.json").read_text())

    releases = {r["version"]: r for r in doc["federation"]["releases"]}
    assert releases[1]["trigger"] == {"kind": "drift", "sites": ["ward-0"],
                                      "signals": {"prompt_nll": P_NLL}}
    assert releases[2]["trigger"] == {"kind": "schedule", "sites": [], "signals": {}}
    assert releases[3]["trigger"] == "unknown"

    d = doc["drift"]
    assert [(r["version"], r["round"], r["sites"], r["this_site_alarmed"])
            for r in d["rounds_triggered"]] == [(1, 1, ["ward-0"], True)]
    assert d["rounds_triggered"][0]["signals"] == {"prompt_nll": P_NLL}
    assert d["trigger_unknown"] == [3]
    (alarm,) = d["alarms"]
    assert alarm["signals"]["prompt_nll"]["p_value"] == P_NLL
    (sent,) = d["alarm_reports"]
    assert sent["action"] == "federation.report_sent"

    # the served adapter's lineage: v2 and v3 (one adapter), each with its trigger
    adapter = max((a for a in doc["appliance"]["adapters"] if a["name"] == "fed-clinics"),
                  key=lambda a: a["version"])
    assert [(r["version"], r["applied"], r["trigger"] if r["trigger"] == "unknown" else
             r["trigger"]["kind"]) for r in adapter["lineage"]] == [
        (2, False, "schedule"), (3, True, "unknown")]
    assert "Rounds the drift trigger started" in (out / "report.html").read_text()
    card = (out / "MODEL_CARD.md").read_text()
    assert "started by: drift alarms of ward-0" in card and "started by: unknown" in card
