"""Signed reports from a site to its coordinator: a drift alarm, or an
automatic rollback (no I/O but the report file helpers at the end).

Sites report what their monitors saw, never data: the model's digest, the
adapter version served, which signals alarmed and their p-values.  A
report is canonical JSON (format "hearth-site-report/1") in the same
signed envelope as plans and releases (docs/formats/release-v1.md), signed
with the site's own Ed25519 key, so the coordinator knows which enrolled
site sent it whatever the transport: the mTLS channel
(`Federation.Report`) or, air-gapped, a `*.hreport` file that
`hearth fed collect` reads from the media.

The coordinator accepts a report only when:

* the signature verifies under an enrolled site's key, and the site the
  report names is the one whose key signed it (one site cannot speak for
  another);
* it is for the coordinator's federation and base model;
* it is fresh: raised within `max_age_s` of now, and not from the future
  beyond a small clock skew (an old alarm replayed later does not count).

A trigger counts distinct sites in its window, so a report delivered twice
(over both transports, say) counts once.
"""
from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import FailedPrecondition
from runtime.federation.release import (
    UntrustedRelease,
    key_fingerprint,
    open_envelope,
    sign_envelope,
)
from runtime.names import is_name
from runtime.storage.fsutil import atomic_write

FORMAT = "hearth-site-report/1"
FILE_SUFFIX = ".hreport"
CLOCK_SKEW_S = 300.0
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ReportKind(enum.Enum):
    DRIFT_ALARM = "drift_alarm"        # a drift alarm rose on live traffic
    ROLLBACK = "rollback"              # the site rolled a release back by itself


@dataclass(frozen=True)
class SiteReport:
    federation: str
    site: str
    kind: ReportKind
    base_model_sha256: str
    adapter_version: int               # the release being served when it was raised
    raised_at: float                   # unix seconds, the site's clock
    p_values: dict[str, float] = field(default_factory=dict)   # signal -> p-value (alarms)
    detail: str = ""                   # a rollback's reason, for the operator

    def canonical(self) -> bytes:
        doc = asdict(self)
        doc["kind"] = self.kind.value
        doc["format"] = FORMAT
        return json.dumps(doc, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode("utf-8")


def sign_report(report: SiteReport, key: Ed25519PrivateKey) -> bytes:
    return sign_envelope(report.canonical(), key)


def _parse(text: bytes) -> SiteReport:
    try:
        doc = json.loads(text)
        if doc.pop("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        p_values = {str(k): float(v) for k, v in dict(doc.pop("p_values")).items()}
        report = SiteReport(
            federation=str(doc.pop("federation")), site=str(doc.pop("site")),
            kind=ReportKind(doc.pop("kind")),
            base_model_sha256=str(doc.pop("base_model_sha256")),
            adapter_version=int(doc.pop("adapter_version")),
            raised_at=float(doc.pop("raised_at")), p_values=p_values,
            detail=str(doc.pop("detail")))
        if doc:
            raise ValueError(f"unknown fields {sorted(doc)}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UntrustedRelease(f"site report: malformed ({exc})") from None
    if not (is_name(report.federation) and is_name(report.site)):
        raise UntrustedRelease("site report: federation or site is not a valid name")
    if not _HEX64.fullmatch(report.base_model_sha256) or report.adapter_version < 0:
        raise UntrustedRelease("site report: bad model digest or adapter version")
    if not all(0.0 <= p <= 1.0 for p in report.p_values.values()) or \
            not math.isfinite(report.raised_at):
        raise UntrustedRelease("site report: p-values must lie in [0, 1]")
    if report.canonical() != text:
        raise UntrustedRelease("site report: not in canonical form")
    return report


def read_report(envelope: bytes, sites: Mapping[str, Ed25519PublicKey], federation: str,
                base_model_sha256: str, now: float, max_age_s: float) -> SiteReport:
    """A report the coordinator may act on, or UntrustedRelease (forged,
    tampered, another site's name) / FailedPrecondition (stale, wrong
    federation or model)."""
    by_fp = {key_fingerprint(k): k for k in sites.values()}
    text = open_envelope(envelope, by_fp, "site report")
    report = _parse(text)
    signer = json.loads(envelope)["key"]
    own = sites.get(report.site)
    if own is None or key_fingerprint(own) != signer:
        raise UntrustedRelease(f"site report: names site {report.site!r} but another "
                               "site's key signed it")
    if report.federation != federation or report.base_model_sha256 != base_model_sha256:
        raise FailedPrecondition(f"site report from {report.site}: for another federation "
                                 "or base model")
    if report.raised_at > now + CLOCK_SKEW_S:
        raise FailedPrecondition(f"site report from {report.site}: raised in the future")
    if now - report.raised_at > max_age_s:
        raise FailedPrecondition(f"site report from {report.site}: older than "
                                 f"{max_age_s:g} s")
    return report


# ---- files on removable media --------------------------------------------------------

def report_file_name(report: SiteReport) -> str:
    return f"{report.site}-{report.kind.value}-{int(report.raised_at * 1000)}{FILE_SUFFIX}"


def write_report_file(directory: Path, report: SiteReport, key: Ed25519PrivateKey) -> Path:
    """The signed report as a file (mode 0600, written whole)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / report_file_name(report)
    atomic_write(path, sign_report(report, key))
    return path


def report_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob(f"*{FILE_SUFFIX}") if p.is_file())
