"""Signed site reports (reports.py) and the coordinator's receiving side
(service.ReportDesk, the Report call, `*.hreport` files for collect): a
report counts only from the enrolled site that signed it, fresh, for this
federation and model; the same report twice is kept and counted once;
rollbacks are recorded but are not alarms.

Checked that these can fail, by edits run and reverted: without the
`report.site != sender` check in ReportDesk.receive the servicer test
passes a report another site sent; without the digest loop the replay
test keeps two reports; with `ReportKind.DRIFT_ALARM` dropped from
`alarms()`'s filter the rollback test counts an alarm; reading the
record without `reports=` in CoordinatorRecord.loads fails the reload test.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime.auth import principal
from runtime.auth.principal import Principal
from runtime.errors import FailedPrecondition, PermissionDenied
from runtime.federation.enrollment import enroll_site, issue_kit, join_site
from runtime.federation.files import collect_reports
from runtime.federation.online import FederationServicer, GrpcExchange
from runtime.federation.release import UntrustedRelease
from runtime.federation.reports import (
    CLOCK_SKEW_S,
    ReportKind,
    SiteReport,
    read_report,
    report_files,
    sign_report,
    write_report_file,
)
from runtime.federation.service import ReportDesk
from runtime.federation.state import (
    CoordinatorRecord,
    SiteContext,
    load_coordinator_record,
)
from runtime.storage.audit import AuditLog
from runtime.storage.store import Kind, SealedStore

DIGEST = "ab" * 32
NOW = 1_800_000_000.0


def report(site: str = "a", kind: ReportKind = ReportKind.DRIFT_ALARM, at: float = NOW,
           federation: str = "clinics", digest: str = DIGEST) -> SiteReport:
    return SiteReport(federation=federation, site=site, kind=kind, base_model_sha256=digest,
                      adapter_version=1, raised_at=at,
                      p_values={"prompt_nll": 1e-5} if kind is ReportKind.DRIFT_ALARM else {},
                      detail="prompt NLL worse by 0.3 nats" if kind is ReportKind.ROLLBACK
                      else "")


KEYS = {"a": Ed25519PrivateKey.generate(), "b": Ed25519PrivateKey.generate()}
SITES = {name: k.public_key() for name, k in KEYS.items()}


def read(envelope: bytes, now: float = NOW, max_age_s: float = 3600.0) -> SiteReport:
    return read_report(envelope, SITES, "clinics", DIGEST, now, max_age_s)


# ---- reports.py ------------------------------------------------------------------------------

def test_a_signed_report_reads_back() -> None:
    r = report()
    assert read(sign_report(r, KEYS["a"])) == r


def test_forged_or_tampered_reports_are_refused() -> None:
    outsider = Ed25519PrivateKey.generate()
    with pytest.raises(UntrustedRelease, match="signed by an unknown key"):
        read(sign_report(report(), outsider))
    envelope = json.loads(sign_report(report(), KEYS["a"]))
    envelope["manifest"] = envelope["manifest"].replace("drift_alarm", "rollback")
    with pytest.raises(UntrustedRelease, match="the signature does not verify"):
        read(json.dumps(envelope).encode())


def test_a_site_cannot_speak_for_another() -> None:
    with pytest.raises(UntrustedRelease, match="names site 'a' but another site's key"):
        read(sign_report(report(site="a"), KEYS["b"]))


@pytest.mark.parametrize("at,message", [
    (NOW - 3601, "older than 3600 s"),
    (NOW + CLOCK_SKEW_S + 1, "raised in the future"),
])
def test_stale_and_future_reports_are_refused(at: float, message: str) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        read(sign_report(report(at=at), KEYS["a"]))
    # within the clock skew is fine
    read(sign_report(report(at=NOW + CLOCK_SKEW_S - 1), KEYS["a"]))


@pytest.mark.parametrize("kw", [{"federation": "other"}, {"digest": "cd" * 32}])
def test_another_federation_or_model_is_refused(kw: dict) -> None:
    with pytest.raises(FailedPrecondition, match="another federation or base model"):
        read(sign_report(report(**kw), KEYS["a"]))


def test_report_files(tmp_path: Path) -> None:
    path = write_report_file(tmp_path / "media", report(), KEYS["a"])
    assert path.name.endswith(".hreport") and path.stat().st_mode & 0o777 == 0o600
    assert report_files(tmp_path / "media") == [path]
    assert read(path.read_bytes()).site == "a"


# ---- the coordinator's side ------------------------------------------------------------------

@pytest.fixture
def federation(tmp_path: Path, tiny_model: Path):  # type: ignore[no-untyped-def]
    """A coordinator store with two joined sites, ward-0 and ward-1: (store,
    {site: its signing key})."""
    from tests.federation.test_site_loop import KEY
    from tests.federation.test_site_loop import federation as make

    coordinator, site_dir = make(tmp_path, tiny_model, noise=0.0)
    second = SealedStore.init(tmp_path / "site-1", KEY)
    keys = {}
    try:
        join_site(second, issue_kit(coordinator, enroll_site(second, "ward-1").dumps())
                  .dumps(), str(tiny_model))
        for path in (site_dir, tmp_path / "site-1"):
            store = SealedStore.open(path, KEY)
            try:
                ctx = SiteContext.open(store)
                keys[ctx.record.site] = ctx.signing_key
            finally:
                store.close()
    finally:
        second.close()
    yield coordinator, keys
    coordinator.close()


def site_report(store: SealedStore, site: str, kind: ReportKind = ReportKind.DRIFT_ALARM,
                at: float | None = None) -> SiteReport:
    s = load_coordinator_record(store).settings
    return SiteReport(federation=s.federation, site=site, kind=kind,
                      base_model_sha256=s.base_model_sha256, adapter_version=0,
                      raised_at=time.time() if at is None else at,
                      p_values={"prompt_nll": 0.001} if kind is ReportKind.DRIFT_ALARM else {},
                      detail="" if kind is ReportKind.DRIFT_ALARM else "worse by 0.2 nats")


def test_a_replayed_report_is_kept_and_counted_once_and_audited(federation) -> None:  # type: ignore[no-untyped-def]
    store, keys = federation
    desk = ReportDesk(store, load_coordinator_record(store), 3600.0)
    envelope = sign_report(site_report(store, "ward-0"), keys["ward-0"])
    first, new = desk.receive(envelope, "ward-0")
    again, new_again = desk.receive(envelope)            # the same, from a file
    assert new and not new_again and again == first
    assert [a.site for a in desk.alarms()] == ["ward-0"]
    # kept in the sealed record: a new process sees it, and an old record loads
    record = load_coordinator_record(store)
    assert record.reports == [first] and first.p_values == {"prompt_nll": 0.001}
    doc = json.loads(record.dumps())
    for key in ("reports", "round_starts", "last_round"):
        del doc[key]
    old = CoordinatorRecord.loads(json.dumps(doc).encode())
    assert old.reports == [] and old.round_starts == [] and old.last_round == 0
    actions = [e.get("action") for e in AuditLog(store).entries()]
    assert actions.count("federation.site_report") == 1


def test_rollbacks_are_recorded_but_are_not_alarms(federation,  # type: ignore[no-untyped-def]
                                                   caplog: pytest.LogCaptureFixture) -> None:
    store, keys = federation
    woke = []
    desk = ReportDesk(store, load_coordinator_record(store), 3600.0,
                      on_alarm=lambda: woke.append(1))
    accepted, _ = desk.receive(sign_report(site_report(store, "ward-1", ReportKind.ROLLBACK),
                                           keys["ward-1"]), "ward-1")
    assert accepted.kind == "rollback" and accepted.detail == "worse by 0.2 nats"
    assert desk.alarms() == [] and woke == []
    assert "site ward-1 rolled back from release v0 by itself" in caplog.text


def test_the_report_call_checks_the_calling_site(federation) -> None:  # type: ignore[no-untyped-def]
    """Over mutual TLS the calling site (its certificate) must be the one
    the report names; a coordinator without a desk refuses the call."""
    store, keys = federation
    desk = ReportDesk(store, load_coordinator_record(store), 3600.0)

    async def call(servicer: FederationServicer, caller: str, envelope: bytes) -> None:
        principal.current.set(Principal(f"site:{caller}", frozenset()))
        await servicer.Report(fpb.ReportRequest(envelope=envelope), None)

    envelope = sign_report(site_report(store, "ward-0"), keys["ward-0"])
    with pytest.raises(PermissionDenied, match="names site 'ward-0' but site 'ward-1' sent it"):
        asyncio.run(call(FederationServicer(GrpcExchange(), desk.receive), "ward-1", envelope))
    assert desk.record.reports == []
    with pytest.raises(FailedPrecondition, match="does not take site reports"):
        asyncio.run(call(FederationServicer(GrpcExchange()), "ward-0", envelope))
    asyncio.run(call(FederationServicer(GrpcExchange(), desk.receive), "ward-0", envelope))
    assert [r.site for r in desk.record.reports] == ["ward-0"]


def test_collect_takes_report_files_and_refuses_stale_ones(federation,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    store, keys = federation
    media = tmp_path / "media"
    write_report_file(media, site_report(store, "ward-0"), keys["ward-0"])
    write_report_file(media, site_report(store, "ward-1", at=time.time() - 7200),
                      keys["ward-1"])
    accepted, refused = collect_reports(store, media, 3600.0)
    assert accepted == ["ward-0 drift_alarm"]
    assert len(refused) == 1 and "older than 3600 s" in refused[0]
    # collected again (the media came back): nothing new
    assert collect_reports(store, media, 3600.0)[0] == []
    assert [r.site for r in load_coordinator_record(store).reports] == ["ward-0"]
    assert not list(store.list(Kind.RELEASE))


def test_one_site_flooding_reports_keeps_the_others(federation,  # type: ignore[no-untyped-def]
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each site keeps its newest MAX_REPORTS_PER_SITE reports; another
    site's alarm stays.  Fails with one cap over all sites (tried: ward-0's
    alarm was pushed out)."""
    from runtime.federation import service

    monkeypatch.setattr(service, "MAX_REPORTS_PER_SITE", 3)
    store, keys = federation
    desk = ReportDesk(store, load_coordinator_record(store), 3600.0)
    desk.receive(sign_report(site_report(store, "ward-0"), keys["ward-0"]))
    now = time.time()
    for i in range(10):
        desk.receive(sign_report(site_report(store, "ward-1", at=now - i), keys["ward-1"]))
    sites = [r.site for r in load_coordinator_record(store).reports]
    assert sites.count("ward-0") == 1 and sites.count("ward-1") == 3
