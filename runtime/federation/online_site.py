"""The site's end of the online transport (`hearth fed participate`):
hearth.federation.v1 over mutual TLS, with the certificate from the site's
kit.  `GrpcLink` is a site_loop.CoordinatorLink; the round itself is
site_loop.participate's.
"""
from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from runtime import errors
from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime._proto.hearth.federation.v1 import federation_pb2_grpc as fgrpc
from runtime.federation.plan import RoundPlan
from runtime.federation.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    UnmaskResponse,
)
from runtime.federation.site_loop import CoordinatorLink, GateVerdict
from runtime.federation.state import SiteContext

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

    def fetch_release(self, after_version: int) -> bytes:
        reply = self.call("GetRelease", fpb.GetReleaseRequest(after_version=after_version))
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

    def submit_masked(self, round_no: int, masked: MaskedInput) -> tuple[list[str], list[str]]:
        outcome = self.call("SubmitMasked", fpb.SubmitMaskedRequest(
            round=round_no, masked=np.asarray(masked.y).astype("<u8").tobytes()))
        return list(outcome.survivors), list(outcome.dropped)

    def unmask(self, round_no: int, response: UnmaskResponse) -> None:
        self.call("Unmask", fpb.UnmaskRequest(
            round=round_no,
            b_shares={k: _to_share(v) for k, v in response.b_shares.items()},
            s_shares={k: _to_share(v) for k, v in response.s_shares.items()}))
