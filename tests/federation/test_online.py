"""The coordinator's online transport without a network: the Federation
service's authenticator (the registry authenticates every call with it, so
a servicer method never runs for a caller that is not an enrolled site; the
TLS handshake already refused certificates of another CA, as
tests/integration/test_federation.py shows), and a whole round driven over
GrpcExchange."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime.auth import principal
from runtime.auth.principal import Principal
from runtime.errors import AlreadyExists, PermissionDenied
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.coordinator import SiteEval
from runtime.federation.gate import CandidateEvaluation, open_candidate_file, sign_evaluation
from runtime.federation.online import FederationServicer, GrpcExchange, SiteAuthenticator
from runtime.federation.rounds import CoordinatorRounds, drive_round
from runtime.federation.site_loop import accept_site_plan, apply_release
from runtime.federation.state import SiteContext
from runtime.federation.update_bundle import seal_update
from runtime.storage.store import SealedStore


class Context:
    def __init__(self, auth: dict) -> None:
        self.auth = auth

    def auth_context(self) -> dict:
        return self.auth


def test_an_enrolled_site_is_named_by_its_certificate() -> None:
    who = SiteAuthenticator({"ward-0": object()}).authenticate(
        Context({"x509_common_name": [b"ward-0"]}))  # type: ignore[arg-type]
    assert who.identity == "site:ward-0" and not who.admin and who.models == frozenset()


@pytest.mark.parametrize("auth", [{"x509_common_name": [b"ward-9"]}, {}],
                         ids=["not-enrolled", "no-certificate"])
def test_anyone_else_is_refused(auth: dict) -> None:
    with pytest.raises(PermissionDenied, match="is not enrolled in this federation"):
        SiteAuthenticator({"ward-0": object()}).authenticate(Context(auth))  # type: ignore[arg-type]


class RpcContext:
    def time_remaining(self) -> float:
        return 30.0


def test_a_round_over_the_grpc_exchange_in_process(tmp_path: Path, tiny_model: Path) -> None:
    """rounds.drive_round over GrpcExchange, with the servicer's methods
    called as the registry would (the caller's principal set): the plan
    goes out, the update comes in, the candidate goes out and the site's
    signed evaluation comes back (the gate's outcome is the answer), and
    the release the site fetches is the one it accepts.  A second update
    from the same site is refused.  Fails when drive_round does not take
    the gathered updates in (tried: the round fails with 0 acceptable
    updates), and without the evaluation (tried: the gate withholds the
    candidate, 0 of 1 sites evaluated it, and GetRelease times out)."""
    from tests.federation.test_site_loop import KEY, federation

    coordinator, site_dir = federation(tmp_path, tiny_model, noise=0.0)
    site = SealedStore.open(site_dir, KEY)
    ctx = SiteContext.open(site)
    rounds = CoordinatorRounds(coordinator)
    n = rounds.c.settings.trainable_size

    async def run() -> fpb.Release:
        exchange = GrpcExchange()
        servicer = FederationServicer(exchange)
        driver = asyncio.create_task(drive_round(rounds, exchange, 5.0))
        principal.current.set(Principal("site:ward-0", frozenset()))
        reply = await servicer.GetPlan(fpb.GetPlanRequest(after_round=0), RpcContext())
        plan = accept_site_plan(ctx, reply.envelope)
        vec = np.concatenate([np.full(n, 0.01, np.float32), np.array([5.0, 2.0], np.float32)])
        blob = seal_update(SiteUpdate("ward-0", vec, 10), "clinics", plan.round,
                           ctx.signing_key, ctx.coordinator_exchange())
        await servicer.SubmitUpdate(fpb.SubmitUpdateRequest(round=1, update=blob), RpcContext())
        with pytest.raises(AlreadyExists):
            await servicer.SubmitUpdate(fpb.SubmitUpdateRequest(round=1, update=blob),
                                        RpcContext())
        candidate = await servicer.GetCandidate(fpb.GetCandidateRequest(round=1), RpcContext())
        manifest, _ = open_candidate_file(candidate.candidate_file, ctx.release_key,
                                          ctx.federation_keys())
        same = SiteEval(5.0, 2.0)
        evaluation = sign_evaluation(CandidateEvaluation(
            "clinics", "ward-0", 1, manifest.adapter_sha256, 0, same, same), ctx.signing_key)
        outcome = await servicer.SubmitEvaluation(
            fpb.SubmitEvaluationRequest(round=1, evaluation=evaluation), RpcContext())
        assert outcome.promoted and outcome.version == 1
        release = await servicer.GetRelease(fpb.GetReleaseRequest(after_version=0),
                                            RpcContext())
        await driver
        await exchange.finish()
        assert (await servicer.GetPlan(fpb.GetPlanRequest(after_round=1), RpcContext())).finished
        return release

    try:
        release = asyncio.run(run())
        assert release.version == 1
        assert apply_release(ctx, release.release_file).metrics["sites"] == 1
        assert ctx.record.applied_version == 1
    finally:
        site.close()
        coordinator.close()
