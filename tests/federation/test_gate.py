"""The gate without a network: the decision (a pure function), its signed
documents (candidate, a site's evaluation, the rejection record), the
coordinator's candidate step (withheld: version kept, privacy spent), and
the settings' margin (`hearth fed init --gate-margin`, old records)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime import errors
from runtime.cli.main import main
from runtime.exit_codes import ExitCode
from runtime.federation.coordinator import FederationSettings, SiteEval
from runtime.federation.gate import (
    CandidateEvaluation,
    CandidateManifest,
    SiteFigures,
    decide,
    open_candidate_file,
    read_evaluation,
    read_rejection,
    rejection_text,
    seal_candidate_file,
    sign_evaluation,
    sign_rejection,
)
from runtime.federation.release import TrustedReleases, UntrustedRelease, key_fingerprint
from runtime.federation.state import CoordinatorRecord
from runtime.federation.train import lora_layout
from tests.federation.test_rounds import SITES, SPEC, coordinator, payload, sealed

BASE = "ab" * 32


def figures(cand_ppl: float, cur_ppl: float, tokens: float = 100.0) -> SiteFigures:
    return SiteFigures(SiteEval(math.log(cand_ppl) * tokens, tokens),
                       SiteEval(math.log(cur_ppl) * tokens, tokens))


ALL = {"a", "b", "c"}


# ---- the decision ------------------------------------------------------------------------

def test_promoted_when_no_site_is_worse_than_the_margin() -> None:
    d = decide({"a": figures(9.0, 10.0), "b": figures(10.19, 10.0), "c": figures(5.0, 6.0)},
               ALL, 0.02, 2)
    assert d.promoted and d.missing == [] and sorted(d.figures) == ["a", "b", "c"]
    assert d.candidate_ppl < d.current_ppl and "not worse" in d.reason


def test_exactly_at_the_margin_passes_and_just_above_it_does_not() -> None:
    assert decide({"a": figures(10.2, 10.0)}, {"a"}, 0.02, 1).promoted
    d = decide({"a": figures(10.21, 10.0)}, {"a"}, 0.02, 1)
    assert not d.promoted and "site a: candidate perplexity 10.21 > current 10" in d.reason


def test_one_worse_site_refuses_even_when_the_aggregate_is_better() -> None:
    """Site b is 10% worse; a and c are much better, so the aggregate is
    better: still refused, naming b (the rule is on every site).  Fails
    when decide skips the per-site check (tried, with the NaN/inf and
    margin tests)."""
    d = decide({"a": figures(5.0, 10.0), "b": figures(11.0, 10.0), "c": figures(5.0, 10.0)},
               ALL, 0.02, 2)
    assert not d.promoted and d.reason.startswith("site b:") and "site a" not in d.reason
    assert d.candidate_ppl < d.current_ppl


def test_the_aggregate_is_judged_too() -> None:
    """Each site within the margin but, weighted by tokens, the candidate
    worse overall (only possible when the token counts of the two
    evaluations differ; the check stands for the rule as written)."""
    d = decide({"a": SiteFigures(SiteEval(1.0, 1.0), SiteEval(10.0, 10.0)),
                "b": SiteFigures(SiteEval(200.0, 100.0), SiteEval(20.0, 10.0))},
               {"a", "b"}, 0.02, 2)
    assert not d.promoted and d.reason.startswith("all sites:")


def test_too_few_evaluations_refuse_and_late_sites_are_listed() -> None:
    d = decide({"a": figures(5.0, 10.0)}, ALL, 0.02, 2)
    assert not d.promoted and "1 of 3 sites returned an evaluation" in d.reason
    assert d.missing == ["b", "c"]
    # judged on those that answered once min_sites did
    d = decide({"a": figures(5.0, 10.0), "b": figures(6.0, 10.0)}, ALL, 0.02, 2)
    assert d.promoted and d.missing == ["c"]
    # a site that was not sent the candidate does not count
    d = decide({"a": figures(5.0, 10.0), "x": figures(5.0, 10.0)}, {"a", "b"}, 0.02, 2)
    assert not d.promoted and sorted(d.figures) == ["a"]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_candidate_figure_that_is_not_finite_is_worse(bad: float) -> None:
    d = decide({"a": SiteFigures(SiteEval(bad, 100.0), SiteEval(200.0, 100.0))}, {"a"},
               0.02, 1)
    assert not d.promoted and "site a" in d.reason


def test_a_current_version_without_a_finite_figure_cannot_be_compared() -> None:
    d = decide({"a": SiteFigures(SiteEval(100.0, 100.0), SiteEval(100.0, 0.0))}, {"a"},
               0.02, 1)
    assert not d.promoted and "cannot be compared" in d.reason


# ---- the documents -----------------------------------------------------------------------

def evaluation(site: str = "site-0", cand: SiteEval | None = None) -> CandidateEvaluation:
    return CandidateEvaluation("clinics", site, 3, "cd" * 32, 2, cand or SiteEval(10.0, 5.0),
                               SiteEval(12.0, 5.0))


def enrolled() -> dict:
    return {name: k.public_key() for name, k in SITES.items()}


def test_a_signed_evaluation_reads_back_and_binds_site_round_and_candidate() -> None:
    env = sign_evaluation(evaluation(), SITES["site-0"])
    ev = read_evaluation(env, enrolled(), "clinics", 3, "cd" * 32, "site-0")
    assert ev == evaluation()
    with pytest.raises(errors.FailedPrecondition, match="sent by"):
        read_evaluation(env, enrolled(), "clinics", 3, "cd" * 32, "site-1")
    for fed, rnd, digest in (("other", 3, "cd" * 32), ("clinics", 4, "cd" * 32),
                             ("clinics", 3, "ef" * 32)):
        with pytest.raises(errors.FailedPrecondition, match="another federation, round"):
            read_evaluation(env, enrolled(), fed, rnd, digest)


def test_an_evaluation_signed_by_another_site_or_tampered_is_refused() -> None:
    """SECURITY: one site cannot speak for another, and the figures cannot
    change on the way.  Fails when read_evaluation skips the signer check
    (tried: site-1's key signing site-0's figures was accepted)."""
    forged = sign_evaluation(evaluation("site-0"), SITES["site-1"])
    with pytest.raises(UntrustedRelease, match="another site's key"):
        read_evaluation(forged, enrolled(), "clinics", 3, "cd" * 32)
    env = json.loads(sign_evaluation(evaluation(), SITES["site-0"]))
    env["manifest"] = env["manifest"].replace('"candidate_nll_sum":10.0',
                                              '"candidate_nll_sum":1.0')
    with pytest.raises(UntrustedRelease, match="does not verify"):
        read_evaluation(json.dumps(env).encode(), enrolled(), "clinics", 3, "cd" * 32)
    outsider = Ed25519PrivateKey.generate()
    with pytest.raises(UntrustedRelease, match="unknown key"):
        read_evaluation(sign_evaluation(evaluation(), outsider), enrolled(), "clinics", 3,
                        "cd" * 32)


def test_a_diverged_figure_travels_as_null_and_counts_as_worse() -> None:
    env = sign_evaluation(evaluation(cand=SiteEval(math.nan, 5.0)), SITES["site-0"])
    assert '"candidate_nll_sum":null' in json.loads(env)["manifest"]
    ev = read_evaluation(env, enrolled(), "clinics", 3, "cd" * 32)
    assert ev.candidate.nll_sum == math.inf
    assert not decide({"site-0": ev.figures()}, {"site-0"}, 0.02, 1).promoted


def test_a_candidate_file_opens_for_sites_but_is_no_release() -> None:
    """SECURITY: the candidate is signed by the federation key and sealed
    under the release key like a release, yet no site can apply it as a
    release (its format is not hearth-release/1), so a refused candidate
    can never be served.  The positive control at the end: the same
    adapter sealed with a signed hearth-release/1 manifest is accepted, so
    the refusal is the format's doing."""
    import hashlib

    from runtime.federation.documents import open_release_file, seal_release_file
    from runtime.federation.release import ReleaseManifest, sign_release

    key, release_key = Ed25519PrivateKey.generate(), b"r" * 32
    adapter = b"adapter bytes"

    m = CandidateManifest("clinics", 3, 2, BASE, hashlib.sha256(adapter).hexdigest(),
                          len(adapter))
    blob = seal_candidate_file(m, adapter, key, release_key)
    keys = {key_fingerprint(key.public_key()): key.public_key()}
    assert open_candidate_file(blob, release_key, keys) == (m, adapter)
    envelope, inner = open_release_file(blob, release_key)
    with pytest.raises(UntrustedRelease):
        TrustedReleases("clinics", keys, BASE, 0).accept(envelope, inner)
    release = ReleaseManifest("clinics", 3, 2, BASE, m.adapter_sha256, len(adapter),
                              "2026-12-02T01:00:00Z")
    envelope, inner = open_release_file(seal_release_file(
        sign_release(release, key), adapter, release_key), release_key)
    assert TrustedReleases("clinics", keys, BASE, 0).accept(envelope, inner).version == 3
    other = Ed25519PrivateKey.generate()
    with pytest.raises(UntrustedRelease, match="unknown key"):
        open_candidate_file(seal_candidate_file(m, adapter, other, release_key), release_key,
                            keys)
    with pytest.raises(UntrustedRelease, match="digest"):
        open_candidate_file(seal_candidate_file(m, adapter + b"!", key, release_key),
                            release_key, keys)


def test_the_rejection_record_is_signed_canonical_json() -> None:
    key = Ed25519PrivateKey.generate()
    d = decide({"a": figures(20.0, 10.0), "b": SiteFigures(SiteEval(math.inf, 10.0),
                                                            SiteEval(20.0, 10.0))},
               {"a", "b", "c"}, 0.05, 2)
    text = rejection_text("clinics", 4, 3, "cd" * 32, d, "2026-12-02T01:00:00Z")
    envelope = sign_rejection(text, key)
    doc = read_rejection(envelope, {key_fingerprint(key.public_key()): key.public_key()})
    assert doc["format"] == "hearth-gate-rejection/1" and doc["round"] == 4
    assert doc["parent_version"] == 3 and doc["candidate_adapter_sha256"] == "cd" * 32
    assert doc["margin"] == 0.05 and doc["reason"] == d.reason and doc["missing"] == ["c"]
    assert doc["sites"]["a"]["candidate_ppl"] == pytest.approx(20.0)
    assert doc["sites"]["b"]["candidate_ppl"] is None        # not finite
    assert text == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(UntrustedRelease, match="unknown key"):
        read_rejection(envelope, {})


# ---- the coordinator's candidate ---------------------------------------------------------

@pytest.fixture(scope="module")
def layout(tiny_model: Path):  # type: ignore[no-untyped-def]
    return lora_layout(str(tiny_model), SPEC)


def test_a_withheld_candidate_keeps_the_version_and_spends_the_privacy(layout) -> None:  # type: ignore[no-untyped-def]
    """The round after a withheld candidate builds on the same version
    with the next round number; epsilon counts the withheld round (its
    noised updates left the sites).  Fails when `withhold` bumps the
    version, and when `aggregate` does not spend (tried: epsilon 0.0)."""
    c = coordinator(layout, min_sites=1, noise_multiplier=1.0, clip_norm=1.0)
    n = c.settings.trainable_size
    c.open_round(time.time())
    c.submit_update(sealed(c, "site-0", payload(np.zeros(n, np.float32)), 5), "site-0")
    cand = c.aggregate(time.time())
    assert cand.sites == ["site-0"] and cand.manifest.version == 1
    with pytest.raises(errors.FailedPrecondition, match="before the gate"):
        c.open_round(time.time())
    c.withhold(cand)
    spent = c.epsilon()
    assert spent is not None and spent > 0
    assert c.version == 0 and c.rounds_done == 1 and c.pending is None
    c.open_round(time.time())
    assert c.current is not None and c.current.plan.round == 2
    assert c.current.plan.adapter_version == 0
    with pytest.raises(errors.FailedPrecondition, match="pending"):
        c.promote(cand, time.time())


# ---- settings ----------------------------------------------------------------------------

def test_a_record_from_before_the_gate_loads_with_the_default_margin() -> None:
    record = CoordinatorRecord(FederationSettings("clinics", BASE, 10), "m.gguf", "pem")
    doc = json.loads(record.dumps())
    del doc["settings"]["gate_margin"], doc["gate"]
    old = CoordinatorRecord.loads(json.dumps(doc).encode())
    assert old.settings.gate_margin == 0.02 and old.gate == []


def test_fed_init_takes_the_gate_margin_and_status_shows_it(
        tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = ["--state-dir", str(tmp_path / "c"), "--key-file", str(tmp_path / "c.key")]
    assert main(["keys", "init", *state]) == ExitCode.OK
    init = ["fed", "init", "--federation", "clinics", "--base-model", str(tiny_model),
            "--rank", "2", *state]
    assert main([*init, "--gate-margin", "1.5"]) == ExitCode.CONFIG
    assert main([*init, "--gate-margin", "0.05"]) == ExitCode.OK
    capsys.readouterr()
    assert main(["fed", "status", *state]) == ExitCode.OK
    status = json.loads(capsys.readouterr().out)["coordinator"]
    assert status["gate_margin"] == 0.05
    assert status["gate"] == [] and status["gate_rejections"] == []


# ---- the online step, in process -----------------------------------------------------------

class _Rpc:
    def time_remaining(self) -> float:
        return 5.0


def test_the_candidate_goes_to_counted_sites_and_a_late_one_learns_the_decision() -> None:
    """GrpcExchange's gate step with the servicer called as the registry
    would: a site whose update counted gets the candidate file, another is
    told why it gets none; an evaluation that comes after the gate decided
    is not counted but answered with the decision (without the `closed`
    check in SubmitEvaluation it failed: "this step of the round is over")."""
    import asyncio
    from types import SimpleNamespace

    from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
    from runtime.auth import principal
    from runtime.auth.principal import Principal
    from runtime.federation.gate import GateDecision
    from runtime.federation.online import FederationServicer, GrpcExchange

    def as_site(name: str) -> None:
        principal.current.set(Principal(f"site:{name}", frozenset()))

    async def run() -> None:
        x = GrpcExchange()
        servicer = FederationServicer(x)
        plan = SimpleNamespace(round=1, adapter_version=2, secure_aggregation=False)
        await x.announce_plan(plan, b"plan", {"ward-0", "ward-1"})  # type: ignore[arg-type]
        as_site("ward-0")                       # the task takes the context as it is now
        waiting = asyncio.create_task(servicer.GetCandidate(fpb.GetCandidateRequest(round=1),
                                                            _Rpc()))
        await asyncio.sleep(0)                  # GetCandidate waits for the candidate
        got = await x.evaluations(plan, b"candidate", {"ward-0"}, 0.05)  # type: ignore[arg-type]
        assert got == {} and (await waiting).candidate_file == b"candidate"
        as_site("ward-1")
        other = await servicer.GetCandidate(fpb.GetCandidateRequest(round=1), _Rpc())
        assert other.candidate_file == b"" and "did not count" in other.reason
        await x.gate_decided(plan, GateDecision(False, "0 of 1 sites", 0.02))  # type: ignore[arg-type]
        as_site("ward-0")
        late = await servicer.SubmitEvaluation(
            fpb.SubmitEvaluationRequest(round=1, evaluation=b"late"), _Rpc())
        assert (late.promoted, late.reason, late.version) == (False, "0 of 1 sites", 2)

    asyncio.run(run())
