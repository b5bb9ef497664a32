"""`hearth fed`: the federation, from both ends.

Coordinator: init, issue, coordinator (online rounds), plan / collect /
publish (air-gapped rounds), status.  Site: enroll, join, participate
(online), export-update / import-release (air-gapped), rollback, evaluate.
Every command works on a sealed state directory (--state-dir and a master
key source, as the other local commands).  simulate runs a whole
federation on loopback.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

from runtime.cli.client import add_common, connect
from runtime.cli.state import add_state_options, opened_store
from runtime.errors import ConfigError, FailedPrecondition
from runtime.exit_codes import ExitCode
from runtime.storage.store import SealedStore


def _store_command(sub: argparse._SubParsersAction, name: str, help_text: str,
                   func: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_state_options(p)
    p.set_defaults(func=func)
    return p


def _coordinator_writer(store: SealedStore) -> Any:
    """state.coordinator_writer: one command at a time changes the record."""
    from runtime.federation.state import coordinator_writer

    return coordinator_writer(store)


def _json(doc: dict[str, Any]) -> None:
    """One JSON line on stdout: what scripts (and simulate) read."""
    print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                      for k, v in doc.items()}, sort_keys=True), flush=True)


# ---- coordinator --------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    from runtime.federation.coordinator import FederationSettings
    from runtime.federation.enrollment import init_coordinator
    from runtime.federation.plan import TrainerSettings
    from runtime.federation.state import file_sha256
    from runtime.federation.train import LoraSpec, lora_layout, trainable_size

    trainer = TrainerSettings(rank=args.rank, steps=args.steps,
                              learning_rate=args.learning_rate, batch_tokens=args.batch_tokens,
                              scheme=args.scheme, seed=args.seed)
    spec = LoraSpec(rank=args.rank, scheme=args.scheme, seed=args.seed)
    size = trainable_size(lora_layout(args.base_model, spec), spec)
    settings = FederationSettings(
        federation=args.federation, base_model_sha256=file_sha256(args.base_model),
        trainable_size=size, trainer=trainer, clip_norm=args.clip_norm,
        noise_multiplier=args.noise_multiplier, delta=args.delta,
        epsilon_budget=args.epsilon_budget, min_sites=args.min_sites,
        secure_aggregation=args.secagg, round_seconds=args.round_seconds,
        **({} if args.gate_margin is None else {"gate_margin": args.gate_margin}))
    if args.min_sites < 1 or args.clip_norm <= 0 or args.noise_multiplier < 0:
        raise ConfigError("--min-sites must be >= 1, --clip-norm > 0, --noise-multiplier >= 0")
    if not 0 <= settings.gate_margin < 1:
        raise ConfigError("--gate-margin must be >= 0 and below 1 (0.02: a candidate may be "
                          "at most 2% worse in held-out perplexity)")
    with opened_store(args) as store:
        init_coordinator(store, settings, args.base_model)
    _json({"federation": args.federation, "trainable_values": size,
           "base_model_sha256": settings.base_model_sha256})
    return ExitCode.OK


def cmd_issue(args: argparse.Namespace) -> int:
    from runtime.federation.enrollment import issue_kit
    from runtime.federation.files import private_write

    with opened_store(args) as store, _coordinator_writer(store):
        kit = issue_kit(store, Path(args.request).read_bytes(), args.coordinator_address)
    private_write(Path(args.out), kit.dumps())
    print(f"enrolled site {kit.site}; its kit is {args.out}", file=sys.stderr)
    return ExitCode.OK


def _coordinator_policy(args: argparse.Namespace) -> Any:
    """[coordinator] of the hearth.toml given, or its defaults."""
    from runtime.config import CoordinatorConfig, load_config

    return load_config(args.config).coordinator if args.config else CoordinatorConfig()


async def _serve_until_stopped(store: SealedStore, args: argparse.Namespace, policy: Any
                               ) -> dict[str, Any]:
    """The service until SIGTERM or SIGINT: both stop it cleanly (exit 0)."""
    import signal

    from runtime.federation.service import serve_forever

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await serve_forever(store, args.listen, policy, args.step_seconds,
                               args.ready_file, stop)


def cmd_coordinator(args: argparse.Namespace) -> int:
    from runtime.federation.serve import serve_rounds
    from runtime.logs import setup_logging

    setup_logging("info", "text")      # the rounds' progress, on stderr
    if args.serve and args.rounds is not None:
        raise ConfigError("--serve runs rounds by the [coordinator] policy; --rounds N runs "
                          "N rounds and stops: give one of them")
    if args.config and not args.serve:
        raise ConfigError("--config: the [coordinator] policy is for --serve")
    policy = _coordinator_policy(args) if args.serve else None
    with opened_store(args) as store, _coordinator_writer(store):
        if args.serve:
            summary = asyncio.run(_serve_until_stopped(store, args, policy))
        else:
            summary = asyncio.run(serve_rounds(store, args.listen, args.rounds or 1,
                                               args.step_seconds, args.ready_file,
                                               args.linger))
    _json(summary)
    return ExitCode.OK


def cmd_plan(args: argparse.Namespace) -> int:
    from runtime.federation.files import open_plan

    with opened_store(args) as store, _coordinator_writer(store):
        plan, path = open_plan(store, Path(args.out))
    _json({"round": plan.round, "plan": str(path)})
    return ExitCode.OK


def cmd_collect(args: argparse.Namespace) -> int:
    from runtime.federation.files import collect_reports, collect_updates, has_update_files
    from runtime.federation.reports import report_files

    directory = Path(args.directory)
    max_age_s = _coordinator_policy(args).report_max_age_s
    accepted: list[str] = []
    refused: list[str] = []
    reports: list[str] = []
    with opened_store(args) as store, _coordinator_writer(store):
        if report_files(directory):
            reports, refused = collect_reports(store, directory, max_age_s)
        # updates need an open round; a directory of reports alone does not
        if has_update_files(directory) or not report_files(directory):
            accepted, refused_updates = collect_updates(store, directory)
            refused += refused_updates
    for line in refused:
        print(f"refused {line}", file=sys.stderr)
    _json({"accepted": accepted, "reports": reports, "refused": refused})
    return ExitCode.OK if not refused else ExitCode.ERROR


def cmd_publish(args: argparse.Namespace) -> int:
    from runtime.federation.files import publish_round

    with opened_store(args) as store, _coordinator_writer(store):
        published, path = publish_round(store, Path(args.out))
    print(f"warning: {GATE_NOT_RUN}", file=sys.stderr)
    _json({"version": published.version, "release": str(path),
           "metrics": published.manifest.metrics,
           "rejected": [f"{r.site}: {r.reason}" for r in published.rejected],
           "gate": GATE_NOT_RUN})
    return ExitCode.OK


GATE_NOT_RUN = ("the gate did not run: air-gapped rounds have no candidate round trip, so "
                "this release was published without the sites evaluating it first")


def _rejection_records(store: SealedStore, federation: str) -> list[dict[str, Any]]:
    """The signed rejection records in the store, each signature checked."""
    from runtime.federation.gate import read_rejection
    from runtime.federation.release import key_fingerprint
    from runtime.federation.state import coordinator_keys, stored_rejections

    key = coordinator_keys(store)[0].public_key()
    docs = [read_rejection(env, {key_fingerprint(key): key})
            for env in stored_rejections(store, federation)]
    return [{"round": d["round"], "candidate_adapter_sha256": d["candidate_adapter_sha256"],
             "reason": d["reason"], "signature": "verified"} for d in docs]


def cmd_status(args: argparse.Namespace) -> int:
    from runtime.federation.state import load_coordinator_record, load_site_record

    with opened_store(args) as store:
        doc: dict[str, Any] = {}
        try:
            r = load_coordinator_record(store)
            doc["coordinator"] = {"federation": r.settings.federation, "version": r.version,
                                  "rounds": r.rounds_done, "sites": sorted(r.sites),
                                  "round_open": bool(r.open_plan),
                                  "values": r.settings.trainable_size,
                                  "secure_aggregation": r.settings.secure_aggregation,
                                  "noise_multiplier": r.settings.noise_multiplier,
                                  "last_round": r.last_round,
                                  "reports": [{"site": x.site, "kind": x.kind,
                                               "raised_at": x.raised_at,
                                               "adapter_version": x.adapter_version}
                                              for x in r.reports[-20:]],
                                  "gate_margin": r.settings.gate_margin,
                                  "gate": r.gate,
                                  "gate_rejections": _rejection_records(
                                      store, r.settings.federation)}
        except FailedPrecondition:
            pass
        try:
            s = load_site_record(store)
            doc["site"] = {"site": s.site, "federation": s.federation,
                           "high_water": s.high_water, "applied_version": s.applied_version,
                           "plans_answered": len(s.answered)}
        except FailedPrecondition:
            pass
    print(json.dumps(doc, indent=1, sort_keys=True))
    return ExitCode.OK


# ---- site ----------------------------------------------------------------------------------

def cmd_enroll(args: argparse.Namespace) -> int:
    from runtime.federation.enrollment import enroll_site
    from runtime.federation.files import private_write

    with opened_store(args) as store:
        request = enroll_site(store, args.site)
    private_write(Path(args.out), request.dumps())
    print(f"site {args.site}: keys created; take {args.out} to the coordinator "
          "(`hearth fed issue`)", file=sys.stderr)
    return ExitCode.OK


def cmd_join(args: argparse.Namespace) -> int:
    from runtime.federation.enrollment import join_site

    with opened_store(args) as store:
        kit = join_site(store, Path(args.kit).read_bytes(), args.base_model)
    _json({"site": kit.site, "federation": kit.federation, "coordinator": kit.coordinator})
    return ExitCode.OK


def _site(store: SealedStore) -> Any:
    from runtime.federation.state import SiteContext

    return SiteContext.open(store)


def _site_policy(args: argparse.Namespace) -> Any:
    """The site's privacy floor: [federation] of the hearth.toml given, or
    none (SitePolicy's defaults)."""
    from runtime.config import load_config
    from runtime.federation.plan import SitePolicy, site_policy

    return site_policy(load_config(args.config).federation) if args.config else SitePolicy()


def _training_conditions(args: argparse.Namespace) -> Any:
    """The site's training windows ([federation] training_windows against
    [energy] grid_g_per_kwh) and the meter its training energy is read on
    ([energy]; the labelled estimate where no counter exists)."""
    from runtime.config import Config, load_config
    from runtime.energy.service import open_meter
    from runtime.energy.windows import site_windows
    from runtime.federation.site_loop import TrainingConditions

    cfg = load_config(args.config) if args.config else Config()
    windows = site_windows(cfg.federation.training_windows, cfg.energy.grid_g_per_kwh)
    return TrainingConditions(windows, open_meter(cfg.energy) if cfg.energy.enabled else None)


def _interrupt_on_sigterm() -> None:
    """SIGTERM as SIGINT: the blocking calls and training stop, the command
    reports what it did and exits 0 (a plan answered stays answered)."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def cmd_participate(args: argparse.Namespace) -> int:
    import threading
    from dataclasses import asdict

    from runtime.federation.online_site import GrpcLink, participate_forever
    from runtime.federation.site_loop import participate
    from runtime.federation.site_training import site_data
    from runtime.logs import setup_logging

    setup_logging("info", "text")
    policy = _site_policy(args)
    conditions = _training_conditions(args)
    with opened_store(args) as store:
        site = _site(store)
        data = site_data(store, args.data, args.heldout)
        link = GrpcLink(site, args.coordinator, args.server_name, args.wait)
        try:
            if args.forever:
                _interrupt_on_sigterm()
                run = participate_forever(site, link, data, threading.Event(), policy,
                                          args.threads, args.retry, conditions)
            else:
                run = participate(site, link, data, policy, args.threads,
                                  conditions=conditions)
        finally:
            link.close()
    _json(asdict(run))
    return ExitCode.OK


def cmd_export_update(args: argparse.Namespace) -> int:
    from runtime.federation.files import export_update
    from runtime.federation.site_training import site_data

    policy = _site_policy(args)
    conditions = _training_conditions(args)
    with opened_store(args) as store:
        site = _site(store)
        data = site_data(store, args.data, args.heldout)
        path, upd = export_update(site, Path(args.plan).read_bytes(), data, Path(args.out),
                                  policy, args.threads, conditions)
    _json({"update": str(path), "bytes": path.stat().st_size, "tokens": upd.tokens,
           "ppl_start": upd.ppl_start, "ppl_local": upd.ppl_local, "norm": upd.norm})
    return ExitCode.OK


def _swap_into_daemon(args: argparse.Namespace, federation: str) -> str | None:
    """Hot-swaps the applied adapter into a running daemon (Models.SetAdapter)."""
    if not args.daemon_model:
        return None
    from runtime.federation.state import adapter_name

    args.addr = args.daemon
    name = args.adapter or adapter_name(federation)
    with connect(args) as c:
        c.set_adapter(args.daemon_model, name, adapter_name(federation))
    return name


def _audit(store: SealedStore, action: str, detail: dict[str, Any]) -> None:
    from runtime.storage.audit import AuditLog

    AuditLog(store).record_admin(action, detail)


def cmd_import_release(args: argparse.Namespace) -> int:
    from runtime.federation.site_loop import apply_release

    with opened_store(args) as store:
        site = _site(store)
        manifest = apply_release(site, Path(args.file).read_bytes())
        _audit(store, "federation.release_applied",
               {"federation": manifest.federation, "version": manifest.version,
                "adapter_sha256": manifest.adapter_sha256})
    swapped = _swap_into_daemon(args, manifest.federation)
    _json({"version": manifest.version, "metrics": manifest.metrics, "swapped_as": swapped})
    return ExitCode.OK


def cmd_rollback(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        site = _site(store)
        previous = site.record.applied_version
        manifest = site.rollback(args.to)
        _audit(store, "federation.rollback",
               {"federation": manifest.federation, "from_version": previous,
                "to_version": manifest.version, "high_water": site.record.high_water,
                "adapter_sha256": manifest.adapter_sha256})
    swapped = _swap_into_daemon(args, manifest.federation)
    _json({"version": manifest.version, "from_version": previous, "swapped_as": swapped})
    return ExitCode.OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from runtime.federation.site_training import evaluate_site, site_data

    with opened_store(args) as store:
        site = _site(store)
        ppl = evaluate_site(site, site_data(store, args.data, args.heldout), args.threads)
        version = site.record.applied_version
    _json({"ppl": ppl, "version": version})
    return ExitCode.OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from runtime.federation.simulate import SimulationOptions, simulate

    summary = simulate(SimulationOptions(
        sites=args.sites, rounds=args.rounds, model=args.model, data=args.data,
        transport=args.transport, secagg=args.secagg, dp_noise=args.dp_noise,
        workdir=args.workdir, steps=args.steps, learning_rate=args.learning_rate,
        batch_tokens=args.batch_tokens,
        rank=args.rank, clip_norm=args.clip_norm, threads=args.threads))
    _json(summary)
    return ExitCode.OK


# ---- parsers -------------------------------------------------------------------------------

def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="sealed data set to train on "
                                                 "(`hearth data add NAME PATH`)")
    p.add_argument("--heldout", help="sealed data set for held-out perplexity (default: every "
                                     "10th note of --data, not trained on)")
    p.add_argument("--threads", type=int, help="trainer threads (default: all cores)")


def _policy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="the site's hearth.toml: its [federation] table is the "
                                    "privacy floor every plan must meet (default: no floor; "
                                    "a plan is still answered at most once)")


def _daemon_options(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.set_defaults(daemon_model="")
    p.add_argument("--daemon", default="", help="hot-swap into this running daemon "
                                                "(HOST:PORT or unix:PATH) ...")
    p.add_argument("--daemon-model", default="", help="... for this model")
    p.add_argument("--adapter", default="", help="the adapter name requests use (default: "
                                                 "fed-FEDERATION)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fed = sub.add_parser("fed", help="federated adapter training: coordinator and sites")
    fsub = fed.add_subparsers(dest="fed_command", required=True)

    p = _store_command(fsub, "init", "create a federation: signing key, CA, settings", cmd_init)
    p.add_argument("--federation", required=True, help="the federation's name")
    p.add_argument("--base-model", required=True, help="the GGUF every site serves")
    g = p.add_argument_group("training (sent to sites in each plan)")
    g.add_argument("--rank", type=int, default=8)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--learning-rate", type=float, default=2e-3)
    g.add_argument("--batch-tokens", type=int, default=1024)
    g.add_argument("--scheme", choices=["ffa", "fedavg"], default="ffa",
                   help="ffa: train B only, A frozen and shared (exact averaging, half the "
                        "bytes); fedavg: A and B")
    g.add_argument("--seed", type=int, default=0, help="seeds the shared A matrices")
    g = p.add_argument_group("aggregation and privacy")
    g.add_argument("--clip-norm", type=float, default=1.0)
    g.add_argument("--noise-multiplier", type=float, default=0.0, help="DP noise (0: off)")
    g.add_argument("--delta", type=float, default=1e-5)
    g.add_argument("--epsilon-budget", type=float, default=math.inf)
    g.add_argument("--min-sites", type=int, default=2,
                   help="fewest updates a round aggregates (and the secure-aggregation "
                        "threshold)")
    g.add_argument("--secagg", action="store_true", help="secure aggregation (online only)")
    g.add_argument("--round-seconds", type=float, default=3600.0,
                   help="a round's deadline, from its plan")
    g.add_argument("--gate-margin", type=float,
                   help="the gate: an online round's candidate is released only if its "
                        "held-out perplexity is at most the current version's x (1 + margin) "
                        "on every site that evaluated it (default 0.02)")

    p = _store_command(fsub, "issue", "enroll a site from its request; writes its kit",
                       cmd_issue)
    p.add_argument("request")
    p.add_argument("--out", required=True)
    p.add_argument("--coordinator-address", default="", help="HOST:PORT sites connect to")

    p = _store_command(fsub, "coordinator", "run online rounds (gRPC, mutual TLS)",
                       cmd_coordinator)
    p.add_argument("--listen", default="127.0.0.1:7443")
    p.add_argument("--rounds", type=int, help="run this many rounds, then stop (default 1)")
    p.add_argument("--serve", action="store_true",
                   help="run as a service until SIGTERM: rounds on the [coordinator] "
                        "schedule or drift trigger, site reports taken in")
    p.add_argument("--config", help="hearth.toml whose [coordinator] table is the --serve "
                                    "policy (default: none; no round starts)")
    p.add_argument("--step-seconds", type=float, default=120.0,
                   help="how long each secure-aggregation step, and the gate's evaluation "
                        "of the candidate, waits for the sites")
    p.add_argument("--ready-file", help="write the bound address here once listening")
    p.add_argument("--linger", type=float, default=5.0,
                   help="seconds to keep serving releases after the last round")

    p = _store_command(fsub, "plan", "open an air-gapped round; writes its signed plan",
                       cmd_plan)
    p.add_argument("--out", required=True, help="directory for plan.json")
    p = _store_command(fsub, "collect", "check and take in the sites' update files and "
                       "report files (*.hreport)", cmd_collect)
    p.add_argument("directory")
    p.add_argument("--config", help="hearth.toml whose [coordinator] report_max_age_s "
                                    "bounds a report's age (default 86400 s)")
    p = _store_command(fsub, "publish", "aggregate the round; writes the signed release",
                       cmd_publish)
    p.add_argument("--out", required=True)
    _store_command(fsub, "status", "what this state directory holds of a federation",
                   cmd_status)

    p = _store_command(fsub, "enroll", "create this site's keys and its enrollment request",
                       cmd_enroll)
    p.add_argument("--site", required=True)
    p.add_argument("--out", required=True, help="the request file for the coordinator")
    p = _store_command(fsub, "join", "take in the kit the coordinator issued", cmd_join)
    p.add_argument("kit")
    p.add_argument("--base-model", required=True)
    p = _store_command(fsub, "participate", "take part in online rounds", cmd_participate)
    _data_options(p)
    _policy_option(p)
    p.add_argument("--coordinator", help="HOST:PORT (default: the kit's)")
    p.add_argument("--server-name", help="the name in the coordinator's certificate, when "
                                         "the address differs")
    p.add_argument("--wait", type=float, default=3600.0, help="longest wait for one step")
    p.add_argument("--forever", action="store_true",
                   help="keep taking part in a serving coordinator's rounds (`fed coordinator "
                        "--serve`) until SIGTERM or Ctrl-C, retrying when it is away")
    p.add_argument("--retry", type=float, default=5.0,
                   help="with --forever: seconds between attempts")
    p = _store_command(fsub, "export-update", "train for a plan; write the update file",
                       cmd_export_update)
    _data_options(p)
    _policy_option(p)
    p.add_argument("--plan", required=True)
    p.add_argument("--out", required=True)
    p = _store_command(fsub, "import-release", "verify and apply a release file",
                       cmd_import_release)
    p.add_argument("file")
    _daemon_options(p)
    p = _store_command(fsub, "rollback", "serve an earlier accepted release again (audited)",
                       cmd_rollback)
    p.add_argument("--to", type=int, required=True, help="the release version")
    _daemon_options(p)
    p = _store_command(fsub, "evaluate", "held-out perplexity with the applied release",
                       cmd_evaluate)
    _data_options(p)

    p = fsub.add_parser("simulate", help="a coordinator and N sites on loopback, over the "
                                         "real transports; prints a JSON summary last")
    p.set_defaults(func=cmd_simulate)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", help="base GGUF (default: a generated tiny model)")
    p.add_argument("--data", help="directory of site-I/train.txt and heldout.txt (default: "
                                  "a generated clinical-notes corpus, split non-IID)")
    p.add_argument("--transport", choices=["grpc", "bundle"], default="grpc")
    p.add_argument("--secagg", action="store_true")
    p.add_argument("--dp-noise", type=float, default=0.0, help="noise multiplier (0: no DP)")
    p.add_argument("--workdir", help="keep the federation's state here (default: a temporary "
                                     "directory, removed)")
    p.add_argument("--steps", type=int, default=30, help="local steps per round")
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--batch-tokens", type=int, default=512)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--clip-norm", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="trainer threads per site")
