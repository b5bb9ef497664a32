"""The transparency report's content (docs/formats/report-v1.md), from the
appliance's own state: the sealed store, the audit log, the configuration.

`build_report(sources)` returns the report as a JSON-ready dict.  What lives
in layers above this one (federation releases, `hearth doctor`'s findings)
comes in through `ReportSources`, gathered by `runtime/cli/transparency.py`.
Nothing is invented: an Art. 13(3) item or an operator text that is not
there is marked missing, with what would fill it.  Never in the report:
prompts, completions, subjects or client identities (counts only).
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime import __version__
from runtime.config import Config, ReportConfig
from runtime.errors import NotFound
from runtime.events import RequestFinished
from runtime.sources import StoredSource
from runtime.storage.audit import AuditLog
from runtime.storage.store import Kind, SealedStore

SCHEMA = "hearth-report/1"
MISSING = "missing"
NOT_MEASURED = "not measured"
UNKNOWN = "unknown"                  # a release whose manifest predates its trigger member
BIAS_OBJECT = "bias-latest"          # Kind.EVALUATION object `hearth eval bias` seals
# Admin actions that are changes to the system (the change log).
CHANGES = ("model.", "federation.", "keys.", "audit.retention", "drift_reset", "report.")
# The site's drift alarms on their way to the coordinator (site_agent.py).
ALARM_DELIVERY = ("federation.report_sent", "federation.report_written",
                  "federation.report_failed")


@dataclass(frozen=True)
class ReleaseInfo:
    """A federation release as the site's store holds it (verified by the
    caller: runtime/federation/state.py)."""

    federation: str
    version: int
    parent_version: int
    base_model_sha256: str
    adapter_sha256: str
    adapter_bytes: int
    created: str
    metrics: dict[str, float]
    applied: bool
    # why its round started (release.RoundTrigger.doc()); None: not recorded
    trigger: dict[str, Any] | None = None


@dataclass(frozen=True)
class SiteInfo:
    site: str
    federation: str
    applied_version: int
    high_water: int
    rounds_answered: int
    noise_multipliers: list[float]


@dataclass(frozen=True)
class CheckResult:
    """One `hearth doctor` finding."""

    check: str
    status: str
    detail: str


@dataclass
class ReportSources:
    config: Config
    store: SealedStore
    audit: AuditLog | None
    engine: str                               # runtime.native.build_info()
    releases: list[ReleaseInfo] = field(default_factory=list)
    site: SiteInfo | None = None
    doctor: list[CheckResult] | None = None   # None: not run
    since: float | None = None
    now: float = field(default_factory=time.time)
    explanations: bool = False                # whether Inference.Explain exists in this build


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def missing(how: str) -> dict[str, str]:
    return {"status": MISSING, "how": how}


# ---- parts -----------------------------------------------------------------------

def operator_text(rc: ReportConfig) -> dict[str, dict[str, str]]:
    out = {}
    for f in fields(ReportConfig):
        text = str(getattr(rc, f.name)).strip()
        out[f.name] = ({"status": "provided", "text": text} if text
                       else missing(f"set [report] {f.name} in hearth.toml"))
    return out


def _stored(store: SealedStore, kind: Kind) -> list[dict[str, Any]]:
    return [{"name": o.name, "version": o.version, "sha256": o.sha256, "bytes": o.size,
             "created": rfc3339(o.created_at)} for o in store.list(kind)]


def models(src: ReportSources) -> list[dict[str, Any]]:
    """The configured models with their file's SHA-256, then stored models
    not in the config."""
    out: list[dict[str, Any]] = []
    stored = {o["name"]: o for o in _stored(src.store, Kind.MODEL)}
    for m in src.config.models.values():
        entry: dict[str, Any] = {"name": m.name, "adapters": [n for n, _ in m.adapters]}
        if m.store:
            obj = stored.pop(m.name, None)
            entry.update(source=str(StoredSource(m.name)),
                         **({"sha256": obj["sha256"], "bytes": obj["bytes"]} if obj
                            else {"sha256": MISSING}))
        else:
            path = Path(m.path)
            try:
                entry.update(source=path.name, sha256=file_sha256(path),
                             bytes=path.stat().st_size)
            except OSError as exc:
                entry.update(source=path.name, sha256=MISSING,
                             error=f"cannot read the file: {exc.strerror}")
        out.append(entry)
    for obj in stored.values():
        out.append({"name": obj["name"], "source": str(StoredSource(obj["name"])),
                    "sha256": obj["sha256"], "bytes": obj["bytes"], "adapters": []})
    return out


def adapters(src: ReportSources) -> list[dict[str, Any]]:
    """Stored adapters, each with the releases that produced it (lineage)."""
    out = []
    for obj in _stored(src.store, Kind.ADAPTER):
        lineage = [_release_doc(r) for r in src.releases if r.adapter_sha256 == obj["sha256"]]
        out.append({**obj, "lineage": lineage or "not from a federation release"})
    return out


def _release_doc(r: ReleaseInfo) -> dict[str, Any]:
    m = r.metrics
    return {"federation": r.federation, "version": r.version,
            "parent_version": r.parent_version, "created": r.created,
            "base_model_sha256": r.base_model_sha256, "adapter_sha256": r.adapter_sha256,
            "adapter_bytes": r.adapter_bytes, "applied": r.applied,
            "round": int(m["round"]) if "round" in m else MISSING,
            "sites": int(m["sites"]) if "sites" in m else MISSING,
            "rejected_updates": int(m["rejected"]) if "rejected" in m else MISSING,
            "epsilon": m.get("epsilon", "no differential privacy (no noise)"),
            "delta": m.get("delta", "no differential privacy (no noise)"),
            "secure_aggregation": "not recorded in the release manifest",
            "heldout_perplexity_of_parent": m.get("heldout_ppl_parent", MISSING),
            "trigger": r.trigger if r.trigger is not None else UNKNOWN,
            "metrics": dict(sorted(m.items()))}


def federation(src: ReportSources) -> dict[str, Any] | str:
    if src.site is None and not src.releases:
        return "this appliance has not joined a federation"
    site = src.site
    return {"site": site.site if site else MISSING,
            "federation": site.federation if site else MISSING,
            "applied_version": site.applied_version if site else MISSING,
            "high_water": site.high_water if site else MISSING,
            "rounds_answered": site.rounds_answered if site else MISSING,
            "noise_multipliers": site.noise_multipliers if site else MISSING,
            "releases": [_release_doc(r) for r in sorted(src.releases,
                                                         key=lambda r: r.version)]}


def bias(store: SealedStore) -> dict[str, Any]:
    import json

    try:
        doc = dict(json.loads(store.read_bytes(Kind.EVALUATION, BIAS_OBJECT)))
    except NotFound:
        return missing("run `hearth eval bias` with the master key options: it seals its "
                       "latest result into the store")
    obj = max((o for o in store.list(Kind.EVALUATION) if o.name == BIAS_OBJECT),
              key=lambda o: o.version)
    return {"status": "measured", "evaluated": rfc3339(obj.created_at), **doc}


@dataclass
class AuditSummary:
    records: int = 0
    shredded: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    clients: set[str] = field(default_factory=set)
    content_logged: int = 0
    energy_joules: float = 0.0
    energy_requests: int = 0
    energy_tokens: int = 0                    # tokens of the measured requests
    energy_sources: Counter[str] = field(default_factory=Counter)
    changes: list[dict[str, Any]] = field(default_factory=list)
    drift_alarms: list[dict[str, Any]] = field(default_factory=list)
    alarm_reports: list[dict[str, Any]] = field(default_factory=list)
    first: float | None = None
    last: float | None = None


def summarize_audit(entries: Iterable[dict[str, Any]]) -> AuditSummary:
    s = AuditSummary()
    for e in entries:
        if e.get("shredded"):
            s.shredded += 1
            continue
        s.records += 1
        ts = float(e.get("time", e.get("ts", 0.0)))
        s.first = ts if s.first is None else min(s.first, ts)
        s.last = ts if s.last is None else max(s.last, ts)
        if e["type"] == "request":
            s.by_model[str(e.get("model", ""))] += 1
            s.by_status[str(e.get("status", ""))] += 1
            s.prompt_tokens += int(e.get("prompt_tokens") or 0)
            s.completion_tokens += int(e.get("completion_tokens") or 0)
            s.clients.add(str(e.get("client", "")))
            s.content_logged += "content" in e
            joules = e.get("energy_joules")
            if isinstance(joules, int | float) and not isinstance(joules, bool):
                s.energy_joules += float(joules)
                s.energy_requests += 1
                s.energy_tokens += int(e.get("prompt_tokens") or 0) + int(
                    e.get("completion_tokens") or 0)
                s.energy_sources[str(e.get("energy_source", "unknown"))] += 1
            continue
        action = str(e.get("action", ""))
        detail = {k: v for k, v in e.items() if k not in ("type", "content")}
        detail["time"] = rfc3339(ts)
        if action == "drift_detected":
            s.drift_alarms.append(detail)
        if action in ALARM_DELIVERY and e.get("kind") == "drift_alarm":
            s.alarm_reports.append(detail)
        if action.startswith(CHANGES):
            s.changes.append(detail)
    return s


def energy(s: AuditSummary) -> dict[str, Any]:
    if not s.energy_requests:
        return {"status": NOT_MEASURED,
                "why": "the audit log's request records carry no energy_joules"}
    tokens = s.energy_tokens
    return {"status": "measured", "total_joules": round(s.energy_joules, 3),
            "requests_measured": s.energy_requests,
            "joules_per_token": round(s.energy_joules / tokens, 6) if tokens else MISSING,
            "sources": dict(s.energy_sources),
            "gco2e": NOT_MEASURED + " (no carbon intensity is recorded with the energy)"}


def logs(src: ReportSources, s: AuditSummary) -> dict[str, Any]:
    record_fields = [f.name for f in fields(RequestFinished)
                     if f.name not in ("content", "subject", "drift")]
    doc: dict[str, Any] = {
        "what": {"request": record_fields + ["time"],
                 "admin": ["action", "time", "the action's details (model loads, federation "
                           "releases and rollbacks, key rotations, drift alarms, retention "
                           "runs, reports)"],
                 "content": "prompts and responses only with content logging on "
                            "(hearth serve --audit-content), sealed per subject"},
        "encryption": "each record AES-256-GCM under the log key and, inside, under a key "
                      "per UTC day (wrapped under the master key); content under a key per "
                      "subject; SHA-256 hash chain over the ciphertext with Ed25519-signed "
                      "checkpoints and a signed anchor (docs/formats/audit-v1.md)",
        "retention_days": src.config.audit.retention_days,
        "retention": "records older than retention_days are crypto-shredded (their day key "
                     "destroyed) by the daemon at start and hourly, or `hearth audit prune`",
        "export": "hearth audit export [--since T] (decrypted JSON lines, with the master key)",
        "verify": "hearth audit verify --fingerprint AUDIT_FINGERPRINT (no master key needed)",
        "erase": "hearth audit erase --subject S (one subject's content, GDPR Art. 17)",
    }
    if src.audit is None:
        doc["status"] = MISSING
        doc["why"] = "this state directory has no audit log"
        return doc
    doc.update(status="present", records_in_period=s.records,
               records_shredded=s.shredded, content_logged_records=s.content_logged,
               oldest_record=rfc3339(s.first) if s.first is not None else None,
               newest_record=rfc3339(s.last) if s.last is not None else None)
    kept = src.audit.retained_since()
    doc["retained_since"] = rfc3339(kept) if kept is not None else None
    return doc


def audit_chain(src: ReportSources) -> dict[str, Any]:
    if src.audit is None:
        return missing("serve with a master key: the audit log is on whenever a key is given")
    broken = src.audit.verify()
    return {"seq": src.audit.seq, "head": src.audit.head.hex(),
            "signing_key_fingerprint": src.audit.fingerprint(),
            "verified": broken is None, **({"break": str(broken)} if broken else {})}


def security(src: ReportSources) -> dict[str, Any]:
    import re

    if src.doctor is None:
        return {"doctor": NOT_MEASURED, "exposure": {"status": NOT_MEASURED}}
    exposure: dict[str, Any] = {"status": NOT_MEASURED, "why": "no unit was rated"}
    for c in src.doctor:
        if c.check == "unit":
            m = re.search(r"exposure ([0-9.]+)", c.detail)
            exposure = ({"status": "measured", "score": float(m.group(1)), "detail": c.detail}
                        if m else {"status": NOT_MEASURED, "why": c.detail})
    return {"doctor": [{"check": c.check, "status": c.status, "detail": c.detail}
                       for c in src.doctor], "exposure": exposure}


def drift(src: ReportSources, s: AuditSummary) -> dict[str, Any]:
    """The site's own alarms, what it told its coordinator, and the
    releases whose round the drift trigger started (from their signed
    manifests: the coordinator counted these sites' alarms)."""
    site = src.site.site if src.site is not None else None
    triggered, unknown = [], []
    for r in sorted(src.releases, key=lambda r: r.version):
        if r.trigger is None:
            unknown.append(r.version)
        elif r.trigger.get("kind") == "drift":
            sites = list(r.trigger.get("sites", []))
            triggered.append({
                "federation": r.federation, "version": r.version,
                "round": int(r.metrics["round"]) if "round" in r.metrics else MISSING,
                "created": r.created, "applied": r.applied, "sites": sites,
                "signals": r.trigger.get("signals", {}),
                "this_site_alarmed": site in sites if site is not None else MISSING})
    return {"alarms": s.drift_alarms, "alarm_reports": s.alarm_reports,
            "references": _stored(src.store, Kind.DRIFT),
            "rounds_triggered": triggered, "trigger_unknown": unknown}


# ---- EU AI Act Art. 13(3) --------------------------------------------------------

def _have(doc: dict[str, Any], path: str) -> bool:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if isinstance(node, dict):
        return node.get("status") not in (MISSING, NOT_MEASURED)
    return node not in (MISSING, NOT_MEASURED, None, [], "")


# item, what the Act asks, the report's sections that answer it
ART13_3: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("a", "identity and contact details of the provider", ("operator.provider",
                                                            "operator.contact")),
    ("b.i", "intended purpose", ("operator.intended_purpose",)),
    ("b.ii", "accuracy, robustness and cybersecurity (Art. 15) and the metrics tested against",
     ("evaluation.federated_heldout", "security.doctor")),
    ("b.iii", "known or foreseeable circumstances of misuse and risks",
     ("operator.out_of_scope_uses", "operator.known_risks")),
    ("b.iv", "technical capabilities to explain the output", ("explanations",)),
    ("b.v", "performance for specific persons or groups", ("evaluation.bias",)),
    ("b.vi", "input data and training data", ("operator.training_data", "federation")),
    ("b.vii", "information to interpret the output", ("operator.output_interpretation",)),
    ("c", "pre-determined changes to the system and its performance",
     ("operator.predetermined_changes", "change_log")),
    ("d", "human oversight measures (Art. 14)", ("operator.human_oversight",)),
    ("e", "computational and hardware resources, expected lifetime, maintenance and updates",
     ("appliance", "energy", "operator.expected_lifetime", "operator.maintenance")),
    ("f", "mechanisms to collect, store and interpret the logs (Art. 12)", ("logs",)),
)


def art13(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for item, title, paths in ART13_3:
        have = [p for p in paths if _have(doc, p)]
        lacking = [p for p in paths if p not in have]
        status = "present" if not lacking else "partial" if have else MISSING
        out.append({"item": item, "title": title, "status": status, "sections": list(paths),
                    "missing": lacking})
    return out


# ---- the whole -------------------------------------------------------------------

def build_report(src: ReportSources) -> dict[str, Any]:
    entries = (src.audit.entries(since=src.since or 0.0, shredded=True)
               if src.audit is not None else ())
    s = summarize_audit(entries)
    heldout = [{"federation": r.federation, "version": r.version,
                "heldout_perplexity_of_parent": r.metrics["heldout_ppl_parent"]}
               for r in sorted(src.releases, key=lambda r: r.version)
               if "heldout_ppl_parent" in r.metrics]
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "generated": rfc3339(src.now),
        "period": {"since": rfc3339(src.since) if src.since else "the log's start",
                   "until": rfc3339(src.now)},
        "appliance": {"hearth": __version__, "engine": src.engine,
                      "models": models(src), "adapters": adapters(src)},
        "federation": federation(src),
        "evaluation": {"federated_heldout": heldout or missing(
                           "no federation release with held-out results is stored"),
                       "bias": bias(src.store)},
        "explanations": ({"status": "available", "how": "hearth explain / Inference.Explain "
                          "(occlusion: sensitivity, not causation)"} if src.explanations
                         else missing("this build has no explanation service")),
        "drift": drift(src, s),
        "energy": energy(s),
        "usage": {"requests": sum(s.by_model.values()), "by_model": dict(s.by_model),
                  "by_status": dict(s.by_status), "prompt_tokens": s.prompt_tokens,
                  "completion_tokens": s.completion_tokens,
                  "distinct_clients": len(s.clients)},
        "logs": logs(src, s),
        "security": security(src),
        "change_log": s.changes,
        "audit_chain": audit_chain(src),
        "operator": operator_text(src.config.report),
    }
    doc["art13_3"] = art13(doc)
    return doc
