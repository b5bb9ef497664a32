"""The coordinator's end of the online transport: hearth.federation.v1 over
gRPC with mutual TLS.

`GrpcExchange` is a rounds.SiteExchange: each step of a round is a `Phase`
that collects the sites' messages until every expected site has sent one
or the step's time is up (a site that misses one is dropped; under secure
aggregation the masks of those that shared come off through the survivors'
shares).  `FederationServicer` only turns RPCs into phase messages and
waits for the phase's outcome; the round is rounds.drive_round's.

The gate's round trip (the candidate out, the sites' signed evaluations
in, the decision back) is its own service, FederationGate, on the same
servicer and authenticator: `evaluations` offers the candidate file and
collects an EVALUATIONS phase, `gate_decided` closes it with the outcome.

A site outside its training windows calls Defer instead of sending: the
round's first step (updates, or the secure-aggregation keys) stops waiting
for it, the round counts it like a late site (`deferrals`), and the
windows it told are kept in `site_windows` for the service's schedule.

The servicer is registered like every other service (server/registry.py:
decoding, error mapping), with `SiteAuthenticator`: a caller is the
enrolled site named by its client certificate, which the federation's CA
issued (a certificate from any other CA fails the TLS handshake).
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np

from runtime import errors
from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime.auth import principal
from runtime.auth.principal import Principal
from runtime.federation.coordinator import Published
from runtime.federation.gate import GateDecision
from runtime.federation.plan import RoundPlan
from runtime.federation.release import TrainingEnergy
from runtime.federation.rounds import Delivery, SiteExchange, Step
from runtime.federation.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    UnmaskResponse,
)
from runtime.server.registry import add_service

log = logging.getLogger("hearth.federation")
T = TypeVar("T")
SITE_PREFIX = "site:"
MAX_WINDOWS = 64                # a deferring site's windows, over a day or two


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

    def withdraw(self, site: str) -> None:
        """The site will not send (it deferred): stop waiting for it."""
        self.expected.discard(site)
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


UPDATES = "updates"
EVALUATIONS = "evaluations"


@dataclass
class RoundChannels:
    number: int
    envelope: bytes
    phases: dict[str | Step, Phase] = field(default_factory=dict)
    candidate: bytes | None = None                  # the candidate file, once aggregated
    failed: errors.HearthError | None = None
    first_step: str | Step = UPDATES     # the step a deferring site no longer joins
    deferred: dict[str, float] = field(default_factory=dict)        # site -> until
    energy: dict[str, TrainingEnergy] = field(default_factory=dict)  # sent beside masked inputs

    def phase(self, step: str | Step) -> Phase:
        found = self.phases.get(step)
        if found is None:
            name = step.value if isinstance(step, Step) else step
            raise errors.FailedPrecondition(f"round {self.number}: the {name} step is not open")
        return found


class GrpcExchange(SiteExchange):
    """The rounds as the servicer sees them: the open round's phases, and
    the releases published so far."""

    secure_aggregation = True

    def __init__(self) -> None:
        self.round: RoundChannels | None = None
        self.changed = asyncio.Condition()
        self.releases: dict[int, bytes] = {}
        self.finished = False
        self.withdrawn = 0              # rounds that ended without a release
        # site -> its open training windows [(opens, closes)], as its last
        # deferral told them (service.py's schedule prefers times inside them)
        self.site_windows: dict[str, list[tuple[float, float]]] = {}

    async def withdraw_round(self) -> None:
        """The open round ended without a release (failed, or the service is
        stopping): its plan is no longer handed out, and sites waiting for
        its release stop waiting (GetRelease: NOT_FOUND)."""
        async with self.changed:
            self.round = None
            self.withdrawn += 1
            self.changed.notify_all()

    async def _announce(self, rc: RoundChannels | None = None, finished: bool = False) -> None:
        async with self.changed:
            if rc is not None:
                self.round = rc
            self.finished = self.finished or finished
            self.changed.notify_all()

    async def finish(self) -> None:
        """No more rounds: sites waiting for a plan are told so."""
        await self._announce(finished=True)

    # ---- rounds.SiteExchange -----------------------------------------------------------

    async def announce_plan(self, plan: RoundPlan, envelope: bytes, sites: set[str]) -> None:
        await self._announce(RoundChannels(plan.round, envelope, {
            UPDATES: Phase(sites), Step.KEYS: Phase(sites)},
            first_step=Step.KEYS if plan.secure_aggregation else UPDATES))

    async def updates(self, plan: RoundPlan, seconds: float) -> list[Delivery]:
        phase = self.channels(plan.round).phase(UPDATES)
        got = await phase.gather(seconds)
        phase.close(None)
        return [Delivery(blob, site, site) for site, blob in got.items()]

    async def publish_release(self, published: Published, release_file: bytes) -> None:
        self.releases[published.version] = release_file
        await self._announce()

    def deferrals(self, plan: RoundPlan) -> dict[str, float]:
        return dict(self.channels(plan.round).deferred)

    def training_energy(self, plan: RoundPlan) -> dict[str, TrainingEnergy]:
        return dict(self.channels(plan.round).energy)

    def defer(self, number: int, site: str, until: float,
              windows: list[tuple[float, float]]) -> None:
        """The site answers round `number` "deferred until `until`": the
        steps that would wait for its first message stop waiting for it."""
        rc = self.channels(number)
        first = rc.phase(rc.first_step)
        if site in rc.deferred:
            raise errors.AlreadyExists(f"site {site!r} already deferred round {number}")
        if site in first.got:
            raise errors.FailedPrecondition(f"site {site!r} already took part in round "
                                            f"{number}; it cannot defer it")
        if first.closed.is_set() or site not in first.expected:
            raise errors.FailedPrecondition(f"round {number} has moved on without this site, "
                                            "or it is not part of it")
        first.withdraw(site)
        rc.deferred[site] = until
        self.site_windows[site] = windows

    async def round_failed(self, plan: RoundPlan, error: errors.HearthError) -> None:
        if self.round is None:
            return
        for phase in self.round.phases.values():
            if not phase.closed.is_set():
                phase.close(errors.FailedPrecondition(f"round {plan.round} failed: {error}"))
        self.round.failed = errors.FailedPrecondition(f"round {plan.round} failed: {error}")
        await self._announce()

    async def evaluations(self, plan: RoundPlan, candidate_file: bytes, sites: set[str],
                          seconds: float) -> dict[str, bytes]:
        rc = self.channels(plan.round)
        rc.phases[EVALUATIONS] = Phase(sites)
        rc.candidate = candidate_file
        await self._announce()
        return await rc.phase(EVALUATIONS).gather(seconds)

    async def gate_decided(self, plan: RoundPlan, decision: GateDecision) -> None:
        phase = self.channels(plan.round).phase(EVALUATIONS)
        version = plan.adapter_version + (1 if decision.promoted else 0)
        if not phase.closed.is_set():
            phase.close((decision, version))

    async def gather(self, step: Step, seconds: float) -> dict[str, Any]:
        assert self.round is not None
        return await self.round.phase(step).gather(seconds)

    async def reply(self, step: Step, result: Any, then: set[str] | None = None) -> None:
        assert self.round is not None
        if then is not None:
            steps = list(Step)
            self.round.phases[steps[steps.index(step) + 1]] = Phase(then)
        self.round.phase(step).close(result)

    # ---- what the servicer waits on ----------------------------------------------------

    def channels(self, number: int) -> RoundChannels:
        rc = self.round
        if rc is None or rc.number != number:
            raise errors.FailedPrecondition(f"round {number} is not open")
        return rc

    async def wait_round(self, after: int, timeout: float) -> RoundChannels | None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(
                lambda: self.finished or (self.round is not None and self.round.number > after)),
                timeout)
            return None if self.finished else self.round

    async def wait_candidate(self, number: int, timeout: float) -> RoundChannels:
        """The round once its candidate is out (or it failed first)."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(
                lambda: self.finished or self.round is None or self.round.number != number
                or self.round.candidate is not None or self.round.failed is not None),
                timeout)
        rc = self.channels(number)
        if rc.failed is not None:
            raise rc.failed
        return rc

    async def wait_release(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        async with self.changed:
            withdrawn = self.withdrawn
            await asyncio.wait_for(self.changed.wait_for(
                lambda: self.finished or any(v > after for v in self.releases)
                or self.withdrawn > withdrawn), timeout)
        newer = [v for v in self.releases if v > after]
        if newer:
            return max(newer), self.releases[max(newer)]
        return None


class SiteAuthenticator:
    """The federation service's callers are its enrolled sites, named by
    the common name of the client certificate the federation's CA issued."""

    def __init__(self, sites: Mapping[str, Any]) -> None:
        self.sites = sites

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        names = (context.auth_context() or {}).get("x509_common_name") or []
        site = names[0].decode() if names else ""
        if site not in self.sites:
            raise errors.PermissionDenied(f"site {site!r} is not enrolled in this federation")
        return Principal(SITE_PREFIX + site, frozenset(), admin=False)


def _site() -> str:
    """The calling site, as SiteAuthenticator named it for this RPC."""
    return principal.current.get().identity.removeprefix(SITE_PREFIX)


def _remaining(context: grpc.aio.ServicerContext) -> float:
    left = context.time_remaining()
    return 3600.0 if left is None else max(0.0, left - 0.5)


async def _waiting(aw: Awaitable[T]) -> T:
    try:
        return await aw
    except TimeoutError:
        raise errors.DeadlineExceeded("the round did not move on in time") from None


class FederationServicer:
    """hearth.federation.v1.Federation; authentication and error mapping
    are the registry's."""

    def __init__(self, exchange: GrpcExchange,
                 reports: Callable[[bytes, str], object] | None = None) -> None:
        self.x = exchange
        self.reports = reports          # takes (signed report, the calling site)

    async def GetPlan(self, request: fpb.GetPlanRequest, context: Any) -> fpb.Plan:
        rc = await _waiting(self.x.wait_round(request.after_round, _remaining(context)))
        return fpb.Plan(finished=True) if rc is None else fpb.Plan(envelope=rc.envelope)

    async def SubmitUpdate(self, request: fpb.SubmitUpdateRequest, context: Any) -> fpb.Ack:
        self.x.channels(request.round).phase(UPDATES).add(_site(), request.update)
        return fpb.Ack()

    async def _step(self, number: int, step: Step, message: Any, context: Any) -> Any:
        phase = self.x.channels(number).phase(step)
        phase.add(_site(), message)
        return await _waiting(asyncio.wait_for(phase.outcome(), _remaining(context)))

    async def AdvertiseKeys(self, request: fpb.AdvertiseKeysRequest, context: Any
                            ) -> fpb.Roster:
        roster = await self._step(request.round, Step.KEYS, AdvertiseKeys(
            _site(), request.c_public_key, request.s_public_key), context)
        return fpb.Roster(sites=[fpb.SiteKeys(site=k.site, c_public_key=k.c_pk,
                                              s_public_key=k.s_pk) for k in roster])

    async def ShareKeys(self, request: fpb.ShareKeysRequest, context: Any
                        ) -> fpb.InboundShares:
        site = _site()
        inboxes = await self._step(request.round, Step.SHARES,
                                   EncryptedShares(site, dict(request.ciphertexts)), context)
        if site not in inboxes:
            raise errors.FailedPrecondition("dropped from the round after sharing keys")
        return fpb.InboundShares(ciphertexts=inboxes[site])

    async def SubmitMasked(self, request: fpb.SubmitMaskedRequest, context: Any
                           ) -> fpb.Survivors:
        if len(request.masked) % 8:
            raise errors.InvalidArgument("masked: not a whole number of uint64 values")
        if request.HasField("energy"):
            self.x.channels(request.round).energy[_site()] = TrainingEnergy(
                request.energy.joules, request.energy.source)
        survivors, dropped = await self._step(request.round, Step.MASKED, MaskedInput(
            _site(), np.frombuffer(request.masked, "<u8").copy()), context)
        return fpb.Survivors(survivors=survivors, dropped=dropped)

    async def Unmask(self, request: fpb.UnmaskRequest, context: Any) -> fpb.Ack:
        def shares(m: Any) -> dict[str, tuple[int, int]]:
            return {k: (v.x, int.from_bytes(v.y, "big")) for k, v in m.items()}
        self.x.channels(request.round).phase(Step.UNMASK).add(_site(), UnmaskResponse(
            _site(), shares(request.b_shares), shares(request.s_shares)))
        return fpb.Ack()

    async def Defer(self, request: fpb.DeferRequest, context: Any) -> fpb.Ack:
        windows = [(w.opens, w.closes) for w in request.windows]
        if not math.isfinite(request.until) or len(windows) > MAX_WINDOWS or not all(
                math.isfinite(a) and math.isfinite(b) and a < b for a, b in windows):
            raise errors.InvalidArgument(f"until, windows: finite times, at most {MAX_WINDOWS} "
                                         "windows, each opening before it closes")
        self.x.defer(request.round, _site(), request.until, windows)
        return fpb.Ack()

    async def GetRelease(self, request: fpb.GetReleaseRequest, context: Any) -> fpb.Release:
        found = await _waiting(self.x.wait_release(request.after_version, _remaining(context)))
        if found is None:
            raise errors.NotFound(f"no release above version {request.after_version}")
        return fpb.Release(version=found[0], release_file=found[1])

    async def Report(self, request: fpb.ReportRequest, context: Any) -> fpb.Ack:
        if self.reports is None:
            raise errors.FailedPrecondition("this coordinator does not take site reports")
        self.reports(bytes(request.envelope), _site())
        return fpb.Ack()

    # ---- the gate (service FederationGate) ----------------------------------------------

    async def GetCandidate(self, request: fpb.GetCandidateRequest, context: Any
                           ) -> fpb.CandidateFile:
        rc = await _waiting(self.x.wait_candidate(request.round, _remaining(context)))
        if _site() not in rc.phase(EVALUATIONS).expected:
            return fpb.CandidateFile(reason=f"round {request.round}: this site's update did "
                                            "not count, so it does not evaluate the candidate")
        assert rc.candidate is not None
        return fpb.CandidateFile(candidate_file=rc.candidate)

    async def SubmitEvaluation(self, request: fpb.SubmitEvaluationRequest, context: Any
                               ) -> fpb.GateOutcome:
        phase = self.x.channels(request.round).phase(EVALUATIONS)
        if not phase.closed.is_set():
            phase.add(_site(), request.evaluation)
        # else: too late to count; the site still learns what was decided
        decision, version = await _waiting(asyncio.wait_for(phase.outcome(),
                                                            _remaining(context)))
        return fpb.GateOutcome(promoted=decision.promoted, reason=decision.reason,
                               version=version)


def add_federation_service(server: grpc.aio.Server, exchange: GrpcExchange,
                           sites: Mapping[str, Any],
                           reports: Callable[[bytes, str], object] | None = None) -> None:
    """`reports`: where signed site reports go (service.ReportDesk.receive);
    None: the Report call is refused."""
    servicer, auth = FederationServicer(exchange, reports), SiteAuthenticator(sites)
    add_service(server, fpb.DESCRIPTOR.services_by_name["Federation"], servicer, auth)
    add_service(server, fpb.DESCRIPTOR.services_by_name["FederationGate"], servicer, auth)


def server_credentials(ca_pem: bytes, key_pem: bytes, cert_pem: bytes
                       ) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=True)
