"""The gate between a round's aggregate and its release (docs/federation.md,
"The gate"; docs/formats/release-v1.md for the signed documents).  No I/O.

After aggregation the coordinator holds a *candidate*: the adapter it would
release.  It sends the candidate to the sites that counted in the round,
each evaluates it and the version it serves now on its own held-out data,
and the gate promotes the candidate only if it is not worse than the
current version by more than the federation's margin on every site that
answered, and over all of them together.  Three signed documents carry it:

* ``hearth-candidate/1``: the candidate's manifest, signed by the
  federation key and sealed with its adapter under the release key like a
  release file (documents.seal_release_file).  Its format is not a
  release's, so no site can apply a candidate as a release;
* ``hearth-candidate-evaluation/1``: one site's figures (held-out NLL sum
  and token count, for the candidate and for the current version), signed
  with the site's own key;
* ``hearth-gate-rejection/1``: the coordinator's record of a refused
  candidate (round, candidate digest, per-site figures, margin, reason),
  signed with the federation key and kept in its sealed state.

All three are canonical JSON (sorted keys, no spaces, UTF-8) in the signed
envelope of release.py.  A figure that is not finite (a diverged adapter's
loss) is written as null and read back as +inf: worse than anything.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import FailedPrecondition
from runtime.federation.coordinator import SiteEval
from runtime.federation.documents import open_release_file, seal_release_file
from runtime.federation.release import (
    UntrustedRelease,
    key_fingerprint,
    open_envelope,
    sign_envelope,
)
from runtime.names import is_name

CANDIDATE_FORMAT = "hearth-candidate/1"
EVALUATION_FORMAT = "hearth-candidate-evaluation/1"
REJECTION_FORMAT = "hearth-gate-rejection/1"


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _figure(value: object, what: str) -> float:
    """A figure as written: a number, or null for one that was not finite."""
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number or null")
    return float(value)


def perplexity(e: SiteEval) -> float:
    """exp(NLL / tokens); +inf for no tokens or a figure that is not finite."""
    if not (e.tokens > 0 and math.isfinite(e.nll_sum) and math.isfinite(e.tokens)):
        return math.inf
    return math.exp(min(e.nll_sum / e.tokens, 700.0))


# ---- the decision ------------------------------------------------------------------------

@dataclass(frozen=True)
class SiteFigures:
    """One site's held-out evaluation of the candidate and of the current
    version, on the same data."""

    candidate: SiteEval
    current: SiteEval


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    margin: float
    figures: dict[str, SiteFigures] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)    # got the candidate, did not answer
    candidate_ppl: float = math.inf                     # over every site that answered
    current_ppl: float = math.inf

    def summary(self) -> dict[str, Any]:
        """The decision as JSON-safe numbers (status, logs, audit)."""
        return {"promoted": self.promoted, "reason": self.reason, "margin": self.margin,
                "candidate_ppl": _finite_or_none(self.candidate_ppl),
                "current_ppl": _finite_or_none(self.current_ppl),
                "sites": sorted(self.figures), "missing": list(self.missing)}


def _not_worse(candidate: float, current: float, margin: float) -> bool:
    # written so that NaN or inf on the candidate's side is worse
    return candidate <= current * (1.0 + margin)


def decide(figures: Mapping[str, SiteFigures], expected: set[str], margin: float,
           min_sites: int) -> GateDecision:
    """Promote only if at least `min_sites` of the `expected` sites (those
    sent the candidate) answered, and on each of them and over all of them
    the candidate's held-out perplexity is at most the current version's
    times (1 + margin).  A site that did not answer cannot show the
    candidate not worse there; the rule judges on those that did, as a
    round aggregates the updates that came."""
    figures = {s: f for s, f in figures.items() if s in expected}
    missing = sorted(expected - set(figures))
    cand = SiteEval(math.fsum(f.candidate.nll_sum for f in figures.values()),
                    math.fsum(f.candidate.tokens for f in figures.values()))
    cur = SiteEval(math.fsum(f.current.nll_sum for f in figures.values()),
                   math.fsum(f.current.tokens for f in figures.values()))
    cand_ppl, cur_ppl = perplexity(cand), perplexity(cur)

    def verdict(promoted: bool, reason: str) -> GateDecision:
        return GateDecision(promoted, reason, margin, dict(figures), missing, cand_ppl, cur_ppl)

    if len(figures) < min_sites:
        return verdict(False, f"{len(figures)} of {len(expected)} sites returned an evaluation "
                              f"of the candidate; the gate needs {min_sites} (min_sites)")
    worse = []
    for site in sorted(figures):
        f = figures[site]
        c, p = perplexity(f.candidate), perplexity(f.current)
        if not math.isfinite(p):
            return verdict(False, f"site {site}: no finite held-out perplexity for the current "
                                  "version, so the candidate cannot be compared there")
        if not _not_worse(c, p, margin):
            worse.append(f"site {site}: candidate perplexity {c:.4g} > current {p:.4g} "
                         f"x (1 + {margin:g})")
    if worse:
        return verdict(False, "; ".join(worse))
    if not _not_worse(cand_ppl, cur_ppl, margin):
        return verdict(False, f"all sites: candidate perplexity {cand_ppl:.4g} > current "
                              f"{cur_ppl:.4g} x (1 + {margin:g})")
    return verdict(True, f"candidate perplexity {cand_ppl:.4g}, current {cur_ppl:.4g} over "
                         f"{len(figures)} sites; not worse than the margin {margin:g} on any")


# ---- the candidate, as sites receive it --------------------------------------------------

@dataclass(frozen=True)
class CandidateManifest:
    federation: str
    round: int
    parent_version: int              # the current version, which the sites serve
    base_model_sha256: str
    adapter_sha256: str
    adapter_bytes: int

    def canonical(self) -> bytes:
        return _canonical({**asdict(self), "format": CANDIDATE_FORMAT})


def seal_candidate_file(manifest: CandidateManifest, adapter: bytes, key: Ed25519PrivateKey,
                        release_key: bytes) -> bytes:
    """The candidate for the sites: its signed manifest and the adapter,
    encrypted under the release key as a release file is."""
    return seal_release_file(sign_envelope(manifest.canonical(), key), adapter, release_key)


def open_candidate_file(blob: bytes, release_key: bytes, keys: dict[str, Ed25519PublicKey]
                        ) -> tuple[CandidateManifest, bytes]:
    """(manifest, adapter) once the signature, the form and the adapter's
    digest check out; the caller checks federation, model and round."""
    envelope, adapter = open_release_file(blob, release_key)
    text = open_envelope(envelope, keys, "candidate")
    try:
        doc = json.loads(text)
        if doc.pop("format") != CANDIDATE_FORMAT:
            raise ValueError(f"format is not {CANDIDATE_FORMAT}")
        m = CandidateManifest(**doc)
        if not (isinstance(m.round, int) and isinstance(m.parent_version, int)
                and isinstance(m.adapter_bytes, int) and is_name(m.federation)):
            raise ValueError("bad field types")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UntrustedRelease(f"candidate: malformed ({exc})") from None
    if m.canonical() != text:
        raise UntrustedRelease("candidate: not in canonical form")
    if len(adapter) != m.adapter_bytes or not hmac.compare_digest(
            hashlib.sha256(adapter).hexdigest(), m.adapter_sha256):
        raise UntrustedRelease("candidate: the adapter does not match the manifest's digest")
    return m, adapter


# ---- a site's evaluation -----------------------------------------------------------------

@dataclass(frozen=True)
class CandidateEvaluation:
    federation: str
    site: str
    round: int
    candidate_sha256: str
    current_version: int
    candidate: SiteEval
    current: SiteEval

    def canonical(self) -> bytes:
        return _canonical({
            "format": EVALUATION_FORMAT, "federation": self.federation, "site": self.site,
            "round": self.round, "candidate_sha256": self.candidate_sha256,
            "current_version": self.current_version,
            "candidate_nll_sum": _finite_or_none(self.candidate.nll_sum),
            "candidate_tokens": _finite_or_none(self.candidate.tokens),
            "current_nll_sum": _finite_or_none(self.current.nll_sum),
            "current_tokens": _finite_or_none(self.current.tokens)})

    def figures(self) -> SiteFigures:
        return SiteFigures(self.candidate, self.current)


def sign_evaluation(ev: CandidateEvaluation, key: Ed25519PrivateKey) -> bytes:
    return sign_envelope(ev.canonical(), key)


def _parse_evaluation(text: bytes) -> CandidateEvaluation:
    try:
        doc = json.loads(text)
        if doc.pop("format") != EVALUATION_FORMAT:
            raise ValueError(f"format is not {EVALUATION_FORMAT}")
        ev = CandidateEvaluation(
            federation=str(doc.pop("federation")), site=str(doc.pop("site")),
            round=int(doc.pop("round")), candidate_sha256=str(doc.pop("candidate_sha256")),
            current_version=int(doc.pop("current_version")),
            candidate=SiteEval(_figure(doc.pop("candidate_nll_sum"), "candidate_nll_sum"),
                               _figure(doc.pop("candidate_tokens"), "candidate_tokens")),
            current=SiteEval(_figure(doc.pop("current_nll_sum"), "current_nll_sum"),
                             _figure(doc.pop("current_tokens"), "current_tokens")))
        if doc:
            raise ValueError(f"unknown fields {sorted(doc)}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UntrustedRelease(f"candidate evaluation: malformed ({exc})") from None
    if not (is_name(ev.federation) and is_name(ev.site)):
        raise UntrustedRelease("candidate evaluation: federation or site is not a valid name")
    if ev.canonical() != text:
        raise UntrustedRelease("candidate evaluation: not in canonical form")
    return ev


def read_evaluation(envelope: bytes, sites: Mapping[str, Ed25519PublicKey], federation: str,
                    round_no: int, candidate_sha256: str, sender: str | None = None
                    ) -> CandidateEvaluation:
    """A site's evaluation the gate may count: signed by the enrolled site
    it names (and sent by it, where the transport says who sent it), for
    this federation, round and candidate."""
    by_fp = {key_fingerprint(k): k for k in sites.values()}
    ev = _parse_evaluation(open_envelope(envelope, by_fp, "candidate evaluation"))
    own = sites.get(ev.site)
    if own is None or key_fingerprint(own) != json.loads(envelope)["key"]:
        raise UntrustedRelease(f"candidate evaluation: names site {ev.site!r} but another "
                               "site's key signed it")
    if sender is not None and sender != ev.site:
        raise FailedPrecondition(f"candidate evaluation: signed by site {ev.site!r} but sent "
                                 f"by {sender!r}")
    if ev.federation != federation or ev.round != round_no or \
            not hmac.compare_digest(ev.candidate_sha256, candidate_sha256):
        raise FailedPrecondition(f"candidate evaluation from {ev.site}: for another "
                                 "federation, round or candidate")
    return ev


# ---- the coordinator's record of a refused candidate -----------------------------------

def rejection_text(federation: str, round_no: int, parent_version: int,
                   candidate_sha256: str, decision: GateDecision, decided: str) -> bytes:
    """Canonical hearth-gate-rejection/1 text; `decided`: RFC 3339, UTC."""
    sites = {s: {"candidate_nll_sum": _finite_or_none(f.candidate.nll_sum),
                 "candidate_tokens": _finite_or_none(f.candidate.tokens),
                 "current_nll_sum": _finite_or_none(f.current.nll_sum),
                 "current_tokens": _finite_or_none(f.current.tokens),
                 "candidate_ppl": _finite_or_none(perplexity(f.candidate)),
                 "current_ppl": _finite_or_none(perplexity(f.current))}
             for s, f in decision.figures.items()}
    return _canonical({
        "format": REJECTION_FORMAT, "federation": federation, "round": round_no,
        "parent_version": parent_version, "candidate_adapter_sha256": candidate_sha256,
        "margin": decision.margin, "reason": decision.reason, "sites": sites,
        "missing": list(decision.missing),
        "candidate_ppl": _finite_or_none(decision.candidate_ppl),
        "current_ppl": _finite_or_none(decision.current_ppl), "decided": decided})


def sign_rejection(text: bytes, key: Ed25519PrivateKey) -> bytes:
    return sign_envelope(text, key)


def read_rejection(envelope: bytes, keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """A stored rejection record, its signature checked."""
    text = open_envelope(envelope, keys, "gate rejection")
    doc = dict(json.loads(text))
    if doc.get("format") != REJECTION_FORMAT or _canonical(doc) != text:
        raise UntrustedRelease(f"gate rejection: not a canonical {REJECTION_FORMAT} document")
    return doc
