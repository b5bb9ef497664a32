"""Carbon-aware training windows in federated rounds (issue 11, section 4).

The done-when test runs online rounds over gRPC with mutual TLS on
loopback, as test_gate_round.py does: a coordinator (`serve_rounds`) and
three real sites (`participate` over `GrpcLink`) training the tiny model,
each on its own sealed store.  One site is outside its training window
(its clock is injected: no waiting for real time): it defers, the round
completes with the other two, and the signed release manifest records
each training site's energy (the estimate on this VM, labelled so).

The others drive a round in process (GrpcExchange and the servicer's
methods, as test_online.py does) without training: a deferral that leaves
too few sites for the plan's minimum fails the round, saying who deferred
until when; and the deferral rules (not twice, not after taking part).
"""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime._proto.hearth.federation.v1 import federation_pb2 as fpb
from runtime.auth import principal
from runtime.auth.principal import Principal
from runtime.config import EnergyConfig
from runtime.energy.carbon import GridIntensity
from runtime.energy.service import open_meter
from runtime.energy.windows import TrainingWindows
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.documents import open_release_file
from runtime.federation.online import FederationServicer, GrpcExchange
from runtime.federation.plan import TrainerSettings
from runtime.federation.release import (
    TrainingEnergy,
    key_fingerprint,
    open_envelope,
    parse_manifest,
)
from runtime.federation.rounds import CoordinatorRounds, drive_round
from runtime.federation.site_loop import SiteRun, TrainingConditions
from runtime.federation.site_training import SiteData
from runtime.federation.state import SiteContext, coordinator_keys
from runtime.federation.update_bundle import seal_update
from runtime.storage.store import Kind, SealedStore
from tests.federation.test_gate_round import KEY as GATE_KEY
from tests.federation.test_gate_round import Federation, run_rounds
from tests.federation.test_gate_round import make_federation as gate_federation

KEY = GATE_KEY            # the stores open under the harness run_rounds uses
TRAINER = TrainerSettings(rank=2, steps=2, learning_rate=0.01, batch_tokens=64)
NIGHT = TrainingWindows.parse(["22:00-06:00"], GridIntensity.parse(0))
NOON = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 2, 23, 30, tzinfo=UTC).timestamp()
OPENS = datetime(2026, 12, 2, 22, 0, tzinfo=UTC).timestamp()


def data(i: int) -> SiteData:
    return SiteData(train=[f"patient {i}{k} was seen in ward {i} and given {k} mg"
                           for k in range(8)],
                    heldout=[f"patient {i}9 was seen in ward {i} and given 9 mg"])


def make_federation(root: Path, model: Path, n_sites: int, min_sites: int
                    ) -> tuple[Path, dict[str, Path]]:
    fed = gate_federation(root, model, TRAINER, n_sites, margin=1e6,   # not the gate's test
                          min_sites=min_sites, clip_norm=5.0)
    return fed.coordinator, fed.sites


def run_round(coordinator: Path, sites: dict[str, Path], conditions: dict[str, TrainingConditions],
              root: Path) -> tuple[dict[str, Any], dict[str, SiteRun]]:
    """One online round over loopback (test_gate_round's harness), each site
    under its own training conditions."""
    return run_rounds(Federation(coordinator, sites),
                      {name: data(int(name[-1])) for name in sites}, 1, root, conditions)


def stored_manifest(coordinator: Path) -> Any:
    store = SealedStore.open(coordinator, KEY)
    try:
        signing, _, release_key = coordinator_keys(store)
        envelope, _ = open_release_file(store.read_bytes(Kind.RELEASE, "clinics"), release_key)
        key = signing.public_key()
        return parse_manifest(open_envelope(envelope, {key_fingerprint(key): key}, "release"))
    finally:
        store.close()


def test_a_site_outside_its_window_defers_and_the_round_completes_without_it(
        tmp_path: Path, tiny_model: Path) -> None:
    """Three sites, the plan's minimum two; all three train only at night
    (22:00-06:00 UTC), and ward-2's clock says noon.  ward-2 defers (until
    22:00, no ledger entry, no training), the round completes with ward-0
    and ward-1 (release v1, 2 sites counted, 1 deferred), and the signed
    release manifest carries the training energy of ward-0 and ward-1,
    metered by the estimate (no RAPL under the empty powercap root, no GPU
    asked for) and labelled so.  Fails without the deferral (tried: with
    `defer_outside_windows` skipped in `participate`, ward-2 trains too and
    the manifest counts 3 sites, none deferred), and without the energy in
    the update header (tried: `seal_update` called without it; the
    manifest has no training_energy)."""
    coordinator, sites = make_federation(tmp_path, tiny_model, 3, 2)
    meter = open_meter(EnergyConfig(gpu=False, powercap_root=str(tmp_path / "no-powercap")))
    night = TrainingConditions(NIGHT, meter, clock=lambda: MIDNIGHT, tz=UTC)
    noon = TrainingConditions(NIGHT, meter, clock=lambda: NOON, tz=UTC)
    summary, runs = run_round(coordinator, sites,
                              {"ward-0": night, "ward-1": night, "ward-2": noon}, tmp_path)

    assert summary["versions"] == [1]
    (metrics,) = summary["metrics"]
    assert metrics["sites"] == 2 and metrics["deferred"] == 1
    assert runs["ward-2"].deferred == [1] and runs["ward-2"].rounds == []
    assert runs["ward-2"].training_joules == 0.0
    for name in ("ward-0", "ward-1"):
        assert runs[name].rounds == [1] and runs[name].releases == [1]
        assert runs[name].deferred == [] and runs[name].energy_source == "estimate"
    manifest = stored_manifest(coordinator)
    print("training energy:", {k: (round(v.joules, 2), v.source)
                               for k, v in manifest.training_energy.items()},
          "round_seconds:", summary["round_seconds"])
    assert manifest.version == 1 and manifest.metrics["deferred"] == 1
    assert sorted(manifest.training_energy) == ["ward-0", "ward-1"]
    for name, energy in manifest.training_energy.items():
        assert energy.source == "estimate" and energy.joules > 0
        assert energy.joules == pytest.approx(runs[name].training_joules)
    store = SealedStore.open(sites["ward-2"], KEY)
    try:
        assert SiteContext.open(store).record.answered == []     # deferred: not answered
    finally:
        store.close()


class RpcContext:
    def time_remaining(self) -> float:
        return 30.0


def as_site(name: str) -> None:
    principal.current.set(Principal(f"site:{name}", frozenset()))


def sealed_update(ctx: SiteContext, site: str, round_no: int, n: int,
                  energy: TrainingEnergy | None) -> bytes:
    vec = np.concatenate([np.full(n, 0.01, np.float32), np.array([5.0, 2.0], np.float32)])
    return seal_update(SiteUpdate(site, vec, 10), "clinics", round_no, ctx.signing_key,
                       ctx.coordinator_exchange(), energy)


def test_a_deferral_below_the_plans_minimum_fails_the_round_and_says_so(
        tmp_path: Path, tiny_model: Path) -> None:
    """Two sites, the plan's minimum two: ward-1 defers, ward-0 sends its
    update; the coordinator stops waiting for ward-1 (the updates step
    ends once ward-0 has sent, long before its 300 s) and the round fails
    like one with a late site, naming the deferral and its time; nothing
    is published.  Deferring twice, or after sending, is refused, and so
    are non-finite times.  Fails without `Phase.withdraw` in
    GrpcExchange.defer (tried: the round waits for ward-1 and the test
    times out at asyncio.wait_for's 60 s)."""
    coordinator, sites = make_federation(tmp_path, tiny_model, 2, 2)
    cstore = SealedStore.open(coordinator, KEY)
    stores = {name: SealedStore.open(path, KEY) for name, path in sites.items()}
    ctxs = {name: SiteContext.open(store) for name, store in stores.items()}
    rounds = CoordinatorRounds(cstore)
    n = rounds.c.settings.trainable_size

    async def run() -> None:
        exchange = GrpcExchange()
        servicer = FederationServicer(exchange)
        driver = asyncio.create_task(drive_round(rounds, exchange, 5.0))
        as_site("ward-1")
        await servicer.GetPlan(fpb.GetPlanRequest(after_round=0), RpcContext())
        with pytest.raises(InvalidArgument):
            await servicer.Defer(fpb.DeferRequest(round=1, until=float("inf")), RpcContext())
        await servicer.Defer(fpb.DeferRequest(
            round=1, until=OPENS, windows=[fpb.Window(opens=OPENS, closes=OPENS + 8 * 3600)]),
            RpcContext())
        with pytest.raises(AlreadyExists):
            await servicer.Defer(fpb.DeferRequest(round=1, until=OPENS), RpcContext())
        assert exchange.site_windows == {"ward-1": [(OPENS, OPENS + 8 * 3600)]}
        as_site("ward-0")
        blob = sealed_update(ctxs["ward-0"], "ward-0", 1, n, TrainingEnergy(3.5, "estimate"))
        await servicer.SubmitUpdate(fpb.SubmitUpdateRequest(round=1, update=blob), RpcContext())
        with pytest.raises(FailedPrecondition):
            await servicer.Defer(fpb.DeferRequest(round=1, until=OPENS), RpcContext())
        with pytest.raises(FailedPrecondition, match=r"needs 2; deferred: ward-1 until "
                                                     r"2026-12-02T22:00:00Z"):
            await asyncio.wait_for(driver, 60)

    try:
        asyncio.run(run())
        assert rounds.c.version == 0 and cstore.list(Kind.RELEASE) == []
    finally:
        for store in stores.values():
            store.close()
        cstore.close()


def test_the_manifest_keeps_training_energy_and_refuses_it_malformed() -> None:
    """The optional member round-trips through the canonical form, is
    absent when empty (manifests without it are unchanged), and a bad
    entry is refused.  Fails with `training_energy` always written (tried:
    the empty-manifest bytes gain `"training_energy":{}`)."""
    from runtime.federation.release import ReleaseManifest, UntrustedRelease

    plain = ReleaseManifest("clinics", 1, 0, "a" * 64, "b" * 64, 10, "2026-12-02T00:00:00Z")
    assert b"training_energy" not in plain.canonical()
    assert parse_manifest(plain.canonical()) == plain
    with_energy = ReleaseManifest("clinics", 1, 0, "a" * 64, "b" * 64, 10,
                                  "2026-12-02T00:00:00Z",
                                  training_energy={"ward-0": TrainingEnergy(2.5, "estimate"),
                                                   "ward-1": TrainingEnergy(0.0, "nvml+rapl")})
    assert parse_manifest(with_energy.canonical()) == with_energy
    for bad in (b'{"joules":-1.0,"source":"estimate"}', b'{"joules":1.0,"source":"guess"}',
                b'{"joules":1,"source":"rapl"}', b'{"joules":1.0}'):
        text = with_energy.canonical().replace(b'{"joules":2.5,"source":"estimate"}', bad)
        with pytest.raises(UntrustedRelease, match="training"):
            parse_manifest(text)
    with pytest.raises(InvalidArgument):
        TrainingEnergy(float("nan"), "estimate")


def test_air_gapped_export_outside_the_window_writes_nothing_and_says_when(
        tmp_path: Path, tiny_model: Path) -> None:
    """Files have no deferral to send: `export-update` outside the windows
    refuses before anything is answered or trained, saying when the window
    opens; the coordinator will count the site as late.  Fails without
    `defer_outside_windows` in files.export_update (tried: the update is
    trained and written)."""
    from runtime.federation.files import export_update, open_plan
    from tests.federation.test_site_loop import DATA, federation
    from tests.federation.test_site_loop import KEY as LOOP_KEY

    coordinator, site_dir = federation(tmp_path, tiny_model, noise=0.0)
    _, plan_file = open_plan(coordinator, tmp_path / "media")
    site = SealedStore.open(site_dir, LOOP_KEY)
    try:
        ctx = SiteContext.open(site)
        noon = TrainingConditions(NIGHT, clock=lambda: NOON, tz=UTC)
        with pytest.raises(FailedPrecondition, match="outside its training windows until "
                                                     "2026-12-02 22:00:00Z"):
            export_update(ctx, plan_file.read_bytes(), DATA, tmp_path / "out", conditions=noon)
        assert ctx.record.answered == [] and not (tmp_path / "out").exists()
    finally:
        site.close()
        coordinator.close()


@pytest.mark.parametrize("command", ["participate", "export-update"])
def test_the_site_commands_take_the_windows_and_the_meter_from_config(
        tmp_path: Path, command: str) -> None:
    """`hearth fed participate` / `export-update --config` read
    [federation] training_windows against [energy] grid_g_per_kwh, and meter
    training with [energy]'s meter (here the estimate: no powercap tree, no
    GPU).  Fails with `_training_conditions` ignoring the config (tried:
    returning TrainingConditions(); the windows are unlimited)."""
    from runtime.cli.fed import _training_conditions
    from runtime.cli.main import parser

    config = tmp_path / "hearth.toml"
    config.write_text('[federation]\ntraining_windows = ["below 200 g/kWh"]\n'
                      '[energy]\ngpu = false\npowercap_root = "/nonexistent"\n'
                      'grid_g_per_kwh = [{from = "22:00", to = "06:00", g = 150},\n'
                      '                  {from = "06:00", to = "22:00", g = 400}]\n')
    extra = ["--plan", "p", "--out", "o"] if command == "export-update" else []
    args = parser().parse_args(["fed", command, "--data", "notes", *extra,
                                "--config", str(config)])
    got = _training_conditions(args)
    assert got.windows.inside(MIDNIGHT, UTC) and not got.windows.inside(NOON, UTC)
    assert got.windows.below_g_per_kwh == 200.0 and got.meter.read().source == "estimate"
    args = parser().parse_args(["fed", command, "--data", "notes", *extra])
    assert _training_conditions(args).windows.unlimited


def test_under_secure_aggregation_the_energy_comes_beside_the_masked_input() -> None:
    """No update file under secure aggregation: the site's training energy
    rides on SubmitMasked (field 3), and the exchange hands it to the
    round (drive_round gives it to Coordinator.note_energy); a bad figure
    is refused, and so is a deferral once the keys step is over.  Fails
    with the `HasField("energy")` branch removed from the servicer (tried:
    the exchange has no energy for the round)."""
    from types import SimpleNamespace

    from runtime.federation.online import Phase
    from runtime.federation.rounds import Step

    plan: Any = SimpleNamespace(round=1, secure_aggregation=True)

    async def run() -> dict[str, TrainingEnergy]:
        exchange = GrpcExchange()
        servicer = FederationServicer(exchange)
        await exchange.announce_plan(plan, b"plan", {"ward-0", "ward-1"})
        assert exchange.round is not None
        exchange.round.phases[Step.KEYS].close(None)        # the keys step is over
        exchange.round.phases[Step.MASKED] = Phase({"ward-0", "ward-1"})
        with pytest.raises(FailedPrecondition, match="moved on"):
            exchange.defer(1, "ward-1", OPENS, [])       # too late to defer
        as_site("ward-1")
        with pytest.raises(InvalidArgument):
            await servicer.SubmitMasked(fpb.SubmitMaskedRequest(
                round=1, masked=b"\0" * 8,
                energy=fpb.TrainingEnergy(joules=-1.0, source="estimate")), RpcContext())
        as_site("ward-0")
        request = fpb.SubmitMaskedRequest(round=1, masked=b"\0" * 8,
                                          energy=fpb.TrainingEnergy(joules=7.25,
                                                                    source="nvml+estimate"))
        task = asyncio.create_task(servicer.SubmitMasked(request, RpcContext()))
        await asyncio.sleep(0.01)
        exchange.round.phases[Step.MASKED].close((["ward-0"], []))
        await task
        return exchange.training_energy(plan)

    assert asyncio.run(run()) == {"ward-0": TrainingEnergy(7.25, "nvml+estimate")}


def test_the_update_header_carries_the_energy_and_a_bad_figure_refuses_it() -> None:
    """hearth-update/1's optional energy_joules/energy_source: read into
    the inbox by site when both are well formed; a negative figure or an
    unknown meter refuses the update (it is signed, so it is the site's
    own error).  Fails with the check in UpdateInbox.open_update removed
    (tried: the bad figures are taken)."""
    from types import SimpleNamespace

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from runtime.federation.update_bundle import RefusedUpdate, UpdateInbox

    site_key, coord = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    update = SiteUpdate("ward-0", np.zeros(4, np.float32), 10)

    def inbox() -> UpdateInbox:
        return UpdateInbox("clinics", 1, coord, {"ward-0": site_key.public_key()}, 4)

    good = inbox()
    good.open_update(seal_update(update, "clinics", 1, site_key, coord.public_key(),
                                 TrainingEnergy(12.5, "rapl")))
    assert good.energy == {"ward-0": TrainingEnergy(12.5, "rapl")}
    none = inbox()
    none.open_update(seal_update(update, "clinics", 1, site_key, coord.public_key()))
    assert none.energy == {}
    for joules, source in ((-1.0, "rapl"), (1.0, "guess"), (1, "rapl")):
        bad: Any = SimpleNamespace(joules=joules, source=source)
        with pytest.raises(RefusedUpdate, match="training energy"):
            inbox().open_update(seal_update(update, "clinics", 1, site_key,
                                            coord.public_key(), bad))


def test_the_service_decides_with_the_sites_and_the_windows_they_told(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve_forever hands policy.decide the enrolled sites and the windows
    that deferrals left in the exchange.  Fails with the two arguments
    dropped from its call (tried: decide gets five arguments, IndexError)."""
    from runtime.config import CoordinatorConfig
    from runtime.federation import service
    from runtime.federation.policy import Decision

    coordinator, _ = make_federation(tmp_path, tiny_model, 2, 2)
    seen: dict[str, Any] = {}

    async def run() -> None:
        stop = asyncio.Event()

        def decide(*args: Any, **kw: Any) -> Decision:
            seen["args"] = args
            stop.set()
            return Decision(False, "looked", float("inf"))

        monkeypatch.setattr(service, "decide", decide)
        store = SealedStore.open(coordinator, KEY)
        try:
            await service.serve_forever(store, "127.0.0.1:0", CoordinatorConfig(every_s=60.0),
                                        5.0, None, stop)
        finally:
            store.close()

    asyncio.run(run())
    assert seen["args"][5] == ["ward-0", "ward-1"] and seen["args"][6] == {}
