"""The online transport: hearth.federation.v1 over gRPC with mutual TLS.

The coordinator's server knows a site by its client certificate, which the
federation's CA issued (a certificate from any other CA fails the TLS
handshake; the name is checked again against the enrolled sites).  The
round logic is coordinator.py's; this module only moves its messages and
waits for the sites.

A round: the plan goes out; sites train and then either submit their
update file, or run the secure-aggregation exchange, whose phases each
close when every roster site has answered or the phase's time is up (a
site that misses one is dropped, and the masks of those that shared come
off through the survivors' shares).  Then the release is signed, stored
and served to the sites that ask for it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np

from runtime import errors
from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime._proto.hearth.federation.v1 import federation_pb2_grpc as fgrpc
from runtime.federation.coordinator import Coordinator, Published
from runtime.federation.operations import store_release
from runtime.federation.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    UnmaskResponse,
)
from runtime.federation.state import CoordinatorRecord
from runtime.server.status import abort_args
from runtime.storage.store import SealedStore

log = logging.getLogger("hearth.federation")
T = TypeVar("T")

# A round's messages grow with the adapter: Gemma 270M's FFA-LoRA rank 8 is
# 1M values, 8 MB masked, and its release file holds A and B.  gRPC's 4 MiB
# default would refuse them; both ends use this bound instead.
MAX_MESSAGE_BYTES = 512 << 20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


class Phase:
    """Messages from sites for one step, until all expected sites sent or
    the time is up."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = set(expected)
        self.got: dict[str, Any] = {}
        self.arrived = asyncio.Event()
        self.closed = asyncio.Event()
        self.result: Any = None

    def add(self, site: str, message: Any) -> None:
        if self.closed.is_set():
            raise errors.FailedPrecondition("this step of the round is over; the site was "
                                            "dropped from it")
        if site not in self.expected:
            raise errors.FailedPrecondition(f"site {site!r} is not part of this step")
        if site in self.got:
            raise errors.AlreadyExists(f"site {site!r} already sent this step's message")
        self.got[site] = message
        if set(self.got) >= self.expected:
            self.arrived.set()

    async def gather(self, seconds: float) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.arrived.wait(), seconds)
        except TimeoutError:
            missing = sorted(self.expected - set(self.got))
            log.warning("round step timed out; dropped: %s", ", ".join(missing))
        return dict(self.got)

    def close(self, result: Any) -> None:
        self.result = result
        self.closed.set()

    async def outcome(self) -> Any:
        await self.closed.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@dataclass
class RoundChannels:
    number: int
    envelope: bytes
    updates: Phase
    keys: Phase
    shares: Phase = field(default_factory=lambda: Phase(set()))
    masked: Phase = field(default_factory=lambda: Phase(set()))
    unmask: Phase = field(default_factory=lambda: Phase(set()))


class RoundDriver:
    """Runs `rounds` rounds over the server's phases, then stops."""

    def __init__(self, store: SealedStore, record: CoordinatorRecord, coordinator: Coordinator,
                 release_key: bytes, rounds: int, step_seconds: float = 120.0) -> None:
        self.store, self.record, self.c = store, record, coordinator
        self.release_key = release_key
        self.rounds = rounds
        self.step_seconds = step_seconds
        self.round: RoundChannels | None = None
        self.round_changed = asyncio.Condition()
        self.releases: dict[int, bytes] = {}
        self.finished = False
        self.round_seconds: list[float] = []
        self.published: list[Published] = []

    async def _announce(self, rc: RoundChannels | None = None, finished: bool = False) -> None:
        async with self.round_changed:
            if rc is not None:
                self.round = rc
            self.finished = self.finished or finished
            self.round_changed.notify_all()

    async def run(self) -> None:
        try:
            for _ in range(self.rounds):
                await self._one_round()
        finally:
            await self._announce(finished=True)

    async def _one_round(self) -> None:
        started = time.monotonic()
        envelope = self.c.open_round(time.time())
        assert self.c.current is not None
        plan = self.c.current.plan
        sites = set(self.c.sites)
        rc = RoundChannels(plan.round, envelope, updates=Phase(sites), keys=Phase(sites))
        await self._announce(rc)
        log.info("round %d open: %d sites, secure aggregation %s", plan.round, len(sites),
                 plan.secure_aggregation)
        training_s = max(1.0, plan.deadline - time.time())
        try:
            if plan.secure_aggregation:
                total = await self._secure_round(rc, training_s)
                published = self.c.close_round(time.time(), total)
            else:
                for site, blob in (await rc.updates.gather(training_s)).items():
                    try:
                        self.c.submit_update(blob, site)
                    except errors.HearthError as exc:
                        log.warning("round %d: update from %s refused: %s", plan.round, site,
                                    exc)
                rc.updates.close(None)
                published = self.c.close_round(time.time())
        except errors.HearthError as exc:
            log.error("round %d failed, no release: %s", plan.round, exc)
            for phase in (rc.updates, rc.keys, rc.shares, rc.masked, rc.unmask):
                if not phase.closed.is_set():
                    phase.close(errors.FailedPrecondition(f"round {plan.round} failed: {exc}"))
            if self.c.current is not None:
                self.c.abandon_round(str(exc))
            raise
        blob = store_release(self.store, self.record, self.c, published)
        self.releases[published.version] = blob
        self.published.append(published)
        self.round_seconds.append(time.monotonic() - started)
        await self._announce()
        log.info("round %d closed: release v%d (%s)", plan.round, published.version,
                 ", ".join(f"{k}={v:.4g}" for k, v in published.manifest.metrics.items()))

    async def _secure_round(self, rc: RoundChannels, training_s: float
                            ) -> tuple[np.ndarray, list[str]]:
        assert self.c.current is not None and self.c.current.secagg is not None
        agg = self.c.current.secagg
        keys = await rc.keys.gather(training_s)
        roster = agg.collect_keys(list(keys.values()))
        rc.shares = Phase({k.site for k in roster})
        rc.keys.close(roster)
        shares = await rc.shares.gather(self.step_seconds)
        inboxes = agg.route(list(shares.values()))
        rc.masked = Phase(set(inboxes))
        rc.shares.close(inboxes)
        masked = await rc.masked.gather(self.step_seconds)
        survivors, dropped = agg.collect_masked(list(masked.values()))
        rc.unmask = Phase(set(survivors))
        rc.masked.close((survivors, dropped))
        responses = await rc.unmask.gather(self.step_seconds)
        rc.unmask.close(None)
        return agg.finish(list(responses.values()))

    async def wait_round(self, after: int, timeout: float) -> RoundChannels | None:
        async with self.round_changed:
            await asyncio.wait_for(self.round_changed.wait_for(
                lambda: self.finished or (self.round is not None and self.round.number > after)),
                timeout)
            return None if self.finished else self.round

    async def wait_release(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        async with self.round_changed:
            await asyncio.wait_for(self.round_changed.wait_for(
                lambda: self.finished or any(v > after for v in self.releases)), timeout)
        newer = [v for v in self.releases if v > after]
        if newer:
            return max(newer), self.releases[max(newer)]
        return None


def _site_of(context: grpc.aio.ServicerContext, enrolled: dict[str, Any]) -> str:
    names = context.auth_context().get("x509_common_name") or []
    site = names[0].decode() if names else ""
    if site not in enrolled:
        raise errors.PermissionDenied(f"site {site!r} is not enrolled in this federation")
    return site


def _remaining(context: grpc.aio.ServicerContext) -> float:
    left = context.time_remaining()
    return 3600.0 if left is None else max(0.0, left - 0.5)


async def _call(context: grpc.aio.ServicerContext, body: Callable[[], Awaitable[T]]) -> T:
    try:
        return await body()
    except TimeoutError:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the round did not move on in "
                            "time")
    except errors.HearthError as exc:
        code, message, trailers = abort_args(exc)
        await context.abort(code, message, trailers)
    raise AssertionError("unreachable")


class FederationServicer(fgrpc.FederationServicer):
    def __init__(self, driver: RoundDriver) -> None:
        self.d = driver

    def _open(self, number: int) -> RoundChannels:
        rc = self.d.round
        if rc is None or rc.number != number:
            raise errors.FailedPrecondition(f"round {number} is not open")
        return rc

    async def GetPlan(self, request: fpb.GetPlanRequest, context: Any) -> fpb.Plan:
        async def body() -> fpb.Plan:
            _site_of(context, self.d.c.sites)
            rc = await self.d.wait_round(request.after_round, _remaining(context))
            if rc is None:
                return fpb.Plan(finished=True)
            return fpb.Plan(envelope=rc.envelope)
        return await _call(context, body)

    async def SubmitUpdate(self, request: fpb.SubmitUpdateRequest, context: Any) -> fpb.Ack:
        async def body() -> fpb.Ack:
            site = _site_of(context, self.d.c.sites)
            self._open(request.round).updates.add(site, request.update)
            return fpb.Ack()
        return await _call(context, body)

    async def AdvertiseKeys(self, request: fpb.AdvertiseKeysRequest, context: Any
                            ) -> fpb.Roster:
        async def body() -> fpb.Roster:
            site = _site_of(context, self.d.c.sites)
            rc = self._open(request.round)
            rc.keys.add(site, AdvertiseKeys(site, request.c_public_key, request.s_public_key))
            roster = await asyncio.wait_for(rc.keys.outcome(), _remaining(context))
            return fpb.Roster(sites=[fpb.SiteKeys(site=k.site, c_public_key=k.c_pk,
                                                  s_public_key=k.s_pk) for k in roster])
        return await _call(context, body)

    async def ShareKeys(self, request: fpb.ShareKeysRequest, context: Any
                        ) -> fpb.InboundShares:
        async def body() -> fpb.InboundShares:
            site = _site_of(context, self.d.c.sites)
            rc = self._open(request.round)
            rc.shares.add(site, EncryptedShares(site, dict(request.ciphertexts)))
            inboxes = await asyncio.wait_for(rc.shares.outcome(), _remaining(context))
            if site not in inboxes:
                raise errors.FailedPrecondition("dropped from the round after sharing keys")
            return fpb.InboundShares(ciphertexts=inboxes[site])
        return await _call(context, body)

    async def SubmitMasked(self, request: fpb.SubmitMaskedRequest, context: Any
                           ) -> fpb.Survivors:
        async def body() -> fpb.Survivors:
            site = _site_of(context, self.d.c.sites)
            rc = self._open(request.round)
            if len(request.masked) % 8:
                raise errors.InvalidArgument("masked: not a whole number of uint64 values")
            rc.masked.add(site, MaskedInput(site, np.frombuffer(request.masked, "<u8").copy()))
            survivors, dropped = await asyncio.wait_for(rc.masked.outcome(),
                                                        _remaining(context))
            return fpb.Survivors(survivors=survivors, dropped=dropped)
        return await _call(context, body)

    async def Unmask(self, request: fpb.UnmaskRequest, context: Any) -> fpb.Ack:
        async def body() -> fpb.Ack:
            site = _site_of(context, self.d.c.sites)
            rc = self._open(request.round)

            def shares(m: Any) -> dict[str, tuple[int, int]]:
                return {k: (v.x, int.from_bytes(v.y, "big")) for k, v in m.items()}
            rc.unmask.add(site, UnmaskResponse(site, shares(request.b_shares),
                                               shares(request.s_shares)))
            return fpb.Ack()
        return await _call(context, body)

    async def GetRelease(self, request: fpb.GetReleaseRequest, context: Any) -> fpb.Release:
        async def body() -> fpb.Release:
            _site_of(context, self.d.c.sites)
            found = await self.d.wait_release(request.after_version, _remaining(context))
            if found is None:
                raise errors.NotFound(f"no release above version {request.after_version}")
            return fpb.Release(version=found[0], release_file=found[1])
        return await _call(context, body)


def server_credentials(ca_pem: bytes, key_pem: bytes, cert_pem: bytes
                       ) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=True)
