"""A site taking part in online rounds (`hearth fed participate`): fetch the
plan, verify it, train, send the update or run the secure-aggregation
exchange, then fetch, verify and apply the release.  Over mutual TLS with
the certificate from the site's kit."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc

from runtime import errors
from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime._proto.hearth.federation.v1 import federation_pb2_grpc as fgrpc
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.online import CHANNEL_OPTIONS
from runtime.federation.operations import (
    SiteData,
    accept_site_plan,
    evaluate_site,
    train_for_plan,
)
from runtime.federation.participant import LocalUpdate, plain_payload, secagg_payload
from runtime.federation.plan import RoundPlan, read_plan
from runtime.federation.release import ReleaseManifest
from runtime.federation.secagg import AdvertiseKeys, SecAggSite
from runtime.federation.state import SiteContext
from runtime.federation.update_bundle import seal_update

log = logging.getLogger("hearth.federation")
SHARE_BYTES = 66            # Shamir values below 2^521 - 1


@dataclass
class SiteRun:
    site: str
    ppl_before: float | None = None
    ppl_after: float | None = None
    bytes_sent: int = 0
    rounds: list[int] = field(default_factory=list)
    releases: list[int] = field(default_factory=list)


class SiteClient:
    def __init__(self, site: SiteContext, address: str | None = None,
                 server_name: str | None = None) -> None:
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
        self.bytes_sent = 0

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, timeout: float) -> Any:
        self.bytes_sent += request.ByteSize()
        return getattr(self.stub, method)(request, timeout=timeout)


def _to_share(v: tuple[int, int]) -> fpb.Share:
    return fpb.Share(x=v[0], y=v[1].to_bytes(SHARE_BYTES, "big"))


def secure_exchange(client: SiteClient, site: str, plan: RoundPlan, envelope: bytes,
                    upd: LocalUpdate, timeout: float) -> None:
    agg = SecAggSite(site, hashlib.sha256(envelope).digest(), plan.min_sites)
    mine = agg.advertise()
    roster = client.call("AdvertiseKeys", fpb.AdvertiseKeysRequest(
        round=plan.round, c_public_key=mine.c_pk, s_public_key=mine.s_pk), timeout)
    shares = agg.share([AdvertiseKeys(k.site, k.c_public_key, k.s_public_key)
                        for k in roster.sites])
    inbound = client.call("ShareKeys", fpb.ShareKeysRequest(
        round=plan.round, ciphertexts=shares.ciphertexts), timeout)
    masked = agg.mask(secagg_payload(upd, plan), dict(inbound.ciphertexts))
    outcome = client.call("SubmitMasked", fpb.SubmitMaskedRequest(
        round=plan.round, masked=masked.y.astype("<u8").tobytes()), timeout)
    response = agg.unmask(list(outcome.survivors), list(outcome.dropped))
    client.call("Unmask", fpb.UnmaskRequest(
        round=plan.round, b_shares={k: _to_share(v) for k, v in response.b_shares.items()},
        s_shares={k: _to_share(v) for k, v in response.s_shares.items()}), timeout)


def fetch_release(client: SiteClient, site: SiteContext, after: int, timeout: float
                  ) -> ReleaseManifest:
    reply = client.call("GetRelease", fpb.GetReleaseRequest(after_version=after), timeout)
    manifest = site.import_release(reply.release_file)
    log.info("applied release v%d (%s)", manifest.version, manifest.metrics)
    return manifest


def participate(site: SiteContext, data: SiteData, client: SiteClient,
                threads: int | None = None, wait_s: float = 3600.0, seed: int | None = None
                ) -> SiteRun:
    """Takes part in rounds until the coordinator says it has finished."""
    run = SiteRun(site.record.site)
    trainer = None
    after_round = 0
    while True:
        reply = client.call("GetPlan", fpb.GetPlanRequest(after_round=after_round), wait_s)
        if reply.finished:
            break
        envelope = bytes(reply.envelope)
        announced = read_plan(envelope, site.federation_keys())
        if announced.adapter_version > site.record.applied_version:
            # Missed a release (joined late, or was down): catch up first.
            fetch_release(client, site, site.record.applied_version, wait_s)
        plan = accept_site_plan(site, envelope)
        upd, trainer = train_for_plan(site, plan, data, threads, seed, trainer)
        if run.ppl_before is None:
            run.ppl_before = upd.ppl_start
        log.info("round %d: trained on %d tokens, held-out perplexity %.3f -> %.3f locally, "
                 "update norm %.4g", plan.round, upd.tokens, upd.ppl_start, upd.ppl_local,
                 upd.norm)
        if plan.secure_aggregation:
            secure_exchange(client, site.record.site, plan, envelope, upd, wait_s)
        else:
            blob = seal_update(SiteUpdate(site.record.site, plain_payload(upd), upd.tokens),
                               site.kit.federation, plan.round, site.signing_key,
                               site.coordinator_exchange())
            client.call("SubmitUpdate", fpb.SubmitUpdateRequest(round=plan.round, update=blob),
                        wait_s)
        manifest = fetch_release(client, site, plan.adapter_version, wait_s)
        run.rounds.append(plan.round)
        run.releases.append(manifest.version)
        after_round = plan.round
    run.ppl_after = evaluate_site(site, data, threads, trainer)
    run.bytes_sent = client.bytes_sent
    return run
