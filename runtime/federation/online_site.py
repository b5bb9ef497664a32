"""The site's end of the online transport (`hearth fed participate`):
hearth.federation.v1 over mutual TLS, with the certificate from the site's
kit.  `GrpcLink` is a site_loop.CoordinatorLink; the round itself is
site_loop.participate's.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
import numpy as np

from runtime import errors
from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime._proto.hearth.federation.v1 import federation_pb2_grpc as fgrpc
from runtime.federation.plan import NO_FLOOR, RoundPlan, SitePolicy
from runtime.federation.release import TrainingEnergy
from runtime.federation.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    UnmaskResponse,
)
from runtime.federation.site_loop import (
    ANY_TIME,
    CoordinatorLink,
    GateVerdict,
    SiteRun,
    TrainingConditions,
    participate,
)
from runtime.federation.site_training import SiteData
from runtime.federation.state import SiteContext

log = logging.getLogger("hearth.federation")

SHARE_BYTES = 66            # Shamir values below 2^521 - 1

# A round's messages grow with the adapter: Gemma 270M's FFA-LoRA rank 8 is
# 1M values, 8 MB masked, and its release file holds A and B.  gRPC's 4 MiB
# default would refuse them; both ends use this bound instead.
MAX_MESSAGE_BYTES = 512 << 20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def _to_share(v: tuple[int, int]) -> fpb.Share:
    return fpb.Share(x=v[0], y=v[1].to_bytes(SHARE_BYTES, "big"))


class GrpcLink(CoordinatorLink):
    """Each call waits up to `wait_s` for the coordinator to move on (a
    round's training takes minutes)."""

    secure_aggregation = True

    def __init__(self, site: SiteContext, address: str | None = None,
                 server_name: str | None = None, wait_s: float = 3600.0) -> None:
        ca, cert, key = site.tls_material()
        target = address or site.kit.coordinator
        if not target:
            raise errors.ConfigError("no coordinator address: the kit has none; pass "
                                     "--coordinator HOST:PORT")
        options: list[tuple[str, str | int]] = list(CHANNEL_OPTIONS)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = grpc.secure_channel(
            target, grpc.ssl_channel_credentials(ca, key, cert), options=options)
        self.stub = fgrpc.FederationStub(self.channel)
        self.gate = fgrpc.FederationGateStub(self.channel)
        self.wait_s = wait_s
        self.bytes_sent = 0
        self.fetched: list[int] = []        # release versions this link brought
        self.deferred: list[int] = []       # rounds this link deferred

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, stub: Any = None) -> Any:
        self.bytes_sent += request.ByteSize()
        return getattr(stub or self.stub, method)(request, timeout=self.wait_s)

    def fetch_plan(self, after_round: int) -> bytes | None:
        reply = self.call("GetPlan", fpb.GetPlanRequest(after_round=after_round))
        return None if reply.finished else bytes(reply.envelope)

    def submit_update(self, plan: RoundPlan, site: str, sealed_update: bytes) -> None:
        self.call("SubmitUpdate", fpb.SubmitUpdateRequest(round=plan.round,
                                                          update=sealed_update))

    def report(self, envelope: bytes, timeout_s: float = 30.0) -> None:
        """Sends a signed site report (reports.sign_report): a drift alarm or
        a rollback.  The coordinator refuses one this site did not sign."""
        self.bytes_sent += len(envelope)
        self.stub.Report(fpb.ReportRequest(envelope=envelope),
                         timeout=min(self.wait_s, timeout_s))

    def fetch_release(self, after_version: int) -> bytes:
        reply = self.call("GetRelease", fpb.GetReleaseRequest(after_version=after_version))
        self.fetched.append(reply.version)
        return bytes(reply.release_file)

    def fetch_candidate(self, round_no: int) -> bytes | None:
        reply = self.call("GetCandidate", fpb.GetCandidateRequest(round=round_no), self.gate)
        return bytes(reply.candidate_file) or None

    def submit_evaluation(self, round_no: int, evaluation: bytes) -> GateVerdict | None:
        outcome = self.call("SubmitEvaluation", fpb.SubmitEvaluationRequest(
            round=round_no, evaluation=evaluation), self.gate)
        return GateVerdict(outcome.promoted, outcome.reason, outcome.version)

    def advertise_keys(self, round_no: int, mine: AdvertiseKeys) -> list[AdvertiseKeys]:
        roster = self.call("AdvertiseKeys", fpb.AdvertiseKeysRequest(
            round=round_no, c_public_key=mine.c_pk, s_public_key=mine.s_pk))
        return [AdvertiseKeys(k.site, k.c_public_key, k.s_public_key) for k in roster.sites]

    def share_keys(self, round_no: int, shares: EncryptedShares) -> dict[str, bytes]:
        inbound = self.call("ShareKeys", fpb.ShareKeysRequest(
            round=round_no, ciphertexts=shares.ciphertexts))
        return dict(inbound.ciphertexts)

    def submit_masked(self, round_no: int, masked: MaskedInput,
                      energy: TrainingEnergy | None = None) -> tuple[list[str], list[str]]:
        request = fpb.SubmitMaskedRequest(
            round=round_no, masked=np.asarray(masked.y).astype("<u8").tobytes())
        if energy is not None:
            request.energy.joules, request.energy.source = energy.joules, energy.source
        outcome = self.call("SubmitMasked", request)
        return list(outcome.survivors), list(outcome.dropped)

    def defer(self, plan: RoundPlan, site: str, until: float,
              windows: list[tuple[float, float]]) -> None:
        try:
            self.call("Defer", fpb.DeferRequest(
                round=plan.round, until=until,
                windows=[fpb.Window(opens=a, closes=b) for a, b in windows]))
        except grpc.RpcError as exc:
            # deferred already (this process restarted): the answer stands
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        self.deferred.append(plan.round)

    def unmask(self, round_no: int, response: UnmaskResponse) -> None:
        self.call("Unmask", fpb.UnmaskRequest(
            round=round_no,
            b_shares={k: _to_share(v) for k, v in response.b_shares.items()},
            s_shares={k: _to_share(v) for k, v in response.s_shares.items()}))


def participate_forever(site: SiteContext, link: GrpcLink, data: SiteData, stop: threading.Event,
                        policy: SitePolicy = NO_FLOOR, threads: int | None = None,
                        retry_s: float = 5.0, conditions: TrainingConditions = ANY_TIME
                        ) -> SiteRun:
    """Takes part in a serving coordinator's rounds as they come, until
    `stop` or an interrupt (SIGINT; the command turns SIGTERM into one).
    Every wait is bounded: a long poll that times out, a
    coordinator that restarts or is unreachable, a round that ends without
    a release, all end the current attempt; the site then asks again for
    the round after the last one it answered (its ledger), so a plan is
    still answered at most once."""
    total = SiteRun(site.record.site)
    answered_before = len(site.record.answered)
    while not stop.is_set():
        # a deferred round is not in the ledger, but it is answered too
        after = max([a.round for a in site.record.answered] + link.deferred, default=0)
        try:
            run = participate(site, link, data, policy, threads, after_round=after,
                              conditions=conditions)
        except KeyboardInterrupt:
            break
        except grpc.RpcError as exc:
            log.info("coordinator: %s (%s); asking again in %g s", exc.code().name,
                     exc.details(), retry_s)
        except errors.HearthError as exc:
            log.warning("round: %s; asking again in %g s", exc, retry_s)
        else:
            if total.ppl_before is None:
                total.ppl_before = run.ppl_before
            total.ppl_after = run.ppl_after
            total.training_joules += run.training_joules
            total.energy_source = run.energy_source or total.energy_source
        try:
            stop.wait(retry_s)
        except KeyboardInterrupt:
            break
    # what this process did, however its last attempt ended: the plans it
    # entered in the ledger, the releases it fetched (and applied)
    total.rounds = [a.round for a in site.record.answered[answered_before:]]
    total.releases = list(dict.fromkeys(link.fetched))
    total.deferred = list(dict.fromkeys(link.deferred))
    total.bytes_sent = link.bytes_sent
    return total
