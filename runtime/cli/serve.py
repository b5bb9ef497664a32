"""`hearth serve`: the daemon's main loop."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cli.exit_codes import ExitCode
from runtime.cli.storage import add_state_options
from runtime.config import (
    Config,
    ModelConfig,
    check_listen_address,
    check_model_name,
    check_source,
    load_config,
    validate_model,
)
from runtime.events import EventBus, RequestFinished
from runtime.logs import setup_logging
from runtime.server import HearthServer, create_server
from runtime.server.app import is_local_address
from runtime.server.metrics import Metrics
from runtime.server.reload import Reloader
from runtime.storage.audit import AuditLog
from runtime.storage.keys import key_source
from runtime.storage.paths import state_dir
from runtime.storage.store import SealedStore
from runtime.systemd import Notifier, watchdog

log = logging.getLogger("hearth.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="hearth.toml")
    p.add_argument("--listen", action="append", metavar="HOST:PORT|unix:PATH",
                   help="address to serve on (repeatable; replaces server.listen)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="serve the GGUF at PATH as NAME (repeatable); NAME alone serves the "
                        "model of that name from the config, else from the sealed store")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="slots (sequences decoded together) of --model models")
    p.add_argument("--ctx", type=int, metavar="N", help="total context of --model models")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of --model models")
    p.add_argument("--n-gpu-layers", metavar="N|auto", help="layers to offload (--model models)")
    p.add_argument("--max-queue", type=int, metavar="N",
                   help="requests waiting beyond the slots (--model models)")
    p.add_argument("--models-dir", help="folder whose NAME.gguf files Models.Load accepts")
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--draft", metavar="PATH|store:NAME",
                   help="speculative decoding for --model models: a small draft model with "
                   "the same tokenizer")
    p.add_argument("--n-draft", type=int, metavar="N",
                   help="tokens the draft proposes per step (default 4, at most 16)")
    p.add_argument("--response-cache-mb", type=int, metavar="MB",
                   help="keep deterministic answers (temperature 0 or a fixed seed) in an "
                   "in-memory LRU of this size, per caller (default 0: off)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics here (loopback only)")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve the OpenAI-compatible HTTP API here (/v1/...; beyond "
                        "loopback only with auth.require)")
    add_state_options(p)
    p.add_argument("--no-audit", action="store_true",
                   help="do not write the audit log (it is on whenever a master key is given)")
    p.add_argument("--audit-content", action="store_true",
                   help="also log prompts and responses, sealed per subject (erasable)")
    p.add_argument("--ready-file", metavar="PATH",
                   help="once serving, write {\"pid\", \"addresses\"} as JSON here (for "
                        "supervisors and tests; useful with port 0)")


def _int_arg(name: str, value: int | None, lo: int) -> int | None:
    if value is not None and value < lo:
        raise errors.ConfigError(f"--{name}: must be >= {lo}, got {value}")
    return value


def build_config(args: argparse.Namespace) -> tuple[Config, list[ModelConfig]]:
    """The config file, then the command line on top; returns the models to
    load at start."""
    config = load_config(args.config) if args.config else Config()
    server = config.server
    if args.listen:
        server = replace(server, listen=tuple(check_listen_address(a, "--listen")
                                              for a in args.listen))
    if args.http_listen:
        if args.http_listen.startswith("unix:"):
            raise errors.ConfigError("--http-listen: must be HOST:PORT")
        check_listen_address(args.http_listen, "--http-listen")
    for key in ("models_dir", "log_format", "log_level", "metrics_listen", "http_listen"):
        if getattr(args, key):
            server = replace(server, **{key: getattr(args, key)})
    cache_mb = _int_arg("response-cache-mb", args.response_cache_mb, 0)
    if cache_mb is not None:
        server = replace(server, response_cache_mb=cache_mb)
    if args.no_audit:
        server = replace(server, audit=False)
    if args.audit_content:
        server = replace(server, audit_content=True)
    overrides: dict[str, Any] = {k: v for k, v in {
        "n_parallel": _int_arg("parallel", args.parallel, 1),
        "n_ctx": _int_arg("ctx", args.ctx, 16),
        "threads": _int_arg("threads", args.threads, 1),
        "max_queue": _int_arg("max-queue", args.max_queue, 0),
        "n_draft": _int_arg("n-draft", args.n_draft, 1),
    }.items() if v is not None}
    if args.draft:
        overrides["draft"] = check_source(args.draft, "--draft").resolved_against(Path.cwd())
    if args.n_gpu_layers is not None:
        if args.n_gpu_layers != "auto" and not args.n_gpu_layers.lstrip("-").isdigit():
            raise errors.ConfigError("--n-gpu-layers: must be an integer or auto")
        overrides["n_gpu_layers"] = (args.n_gpu_layers if args.n_gpu_layers == "auto"
                                     else int(args.n_gpu_layers))
    models = {n: m for n, m in config.models.items() if m.load}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        check_model_name(name, "--model")
        if sep:
            base = ModelConfig(name=name, path=path)
        elif name in config.models:
            base = config.models[name]
        else:
            base = ModelConfig(name=name, store=True)
        if "n_parallel" in overrides and "n_ctx" not in overrides:
            # keep the per-slot context when only the slot count changes
            overrides_here = {**overrides,
                              "n_ctx": base.n_ctx // base.n_parallel * overrides["n_parallel"]}
        else:
            overrides_here = overrides
        model = replace(base, **overrides_here)
        validate_model(model, f"--model {name}: ")
        models[name] = model
    return replace(config, server=server), list(models.values())


def open_store(args: argparse.Namespace, models: list[ModelConfig]) -> SealedStore | None:
    """The sealed store, when a model comes from it or a master key is given."""
    keyed = bool(args.key_file or args.passphrase_file or args.credential)
    if not keyed and not any(m.store for m in models):
        return None
    directory = state_dir(args.state_dir)
    return SealedStore.open(directory, key_source(args.key_file, args.passphrase_file,
                                                  args.credential))


def _write_ready_file(path: str, addresses: list[str], metrics: str, http: str = "") -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "addresses": addresses, "metrics": metrics,
                   "http": http}, f)
    os.replace(tmp, path)


def start_metrics(config: Config, events: EventBus, server: HearthServer,
                  audit: AuditLog | None) -> str:
    addr = config.server.metrics_listen
    if not addr:
        return ""
    if not is_local_address(addr):
        raise errors.ConfigError(f"server.metrics_listen: {addr} is not a loopback address")
    metrics = Metrics(events, server.models, (lambda: audit.lag_s) if audit else None,
                      server.core.cache)
    port = metrics.serve(addr)
    return f"{addr.rpartition(':')[0]}:{port}"


def engine_heartbeats(server: HearthServer) -> dict[str, int]:
    beats = {}
    for handle in server.models.handles():
        stats = handle.engine.stats_if_open() if handle.engine is not None else None
        if stats is not None:
            beats[handle.name] = stats.last_heartbeat_ns
    return beats


async def run(config: Config, models: list[ModelConfig], ready_file: str | None = None,
              store: SealedStore | None = None, audit: AuditLog | None = None,
              reload_config: Callable[[], tuple[Config, list[ModelConfig]]] | None = None
              ) -> int:
    notifier = Notifier()
    events = EventBus()
    server = create_server(config, events, store=store)
    if audit is not None:
        events.subscribe(audit.record, RequestFinished)
        server.core.collect_content = audit.content
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = Reloader(server, reload_config or (lambda: (config, models)), models, notifier)
    # SIGHUP's default action would kill the daemon; from here on it reloads
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    try:
        await server.start()
        metrics_addr = start_metrics(config, events, server, audit)
    except errors.ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG
    except errors.Unavailable as exc:
        log.error("%s", exc)
        return ExitCode.LISTEN
    pinger = asyncio.ensure_future(watchdog(notifier, lambda: engine_heartbeats(server), stop))
    try:
        for model in models:
            notifier.status(f"loading model {model.name}")
            load = asyncio.ensure_future(server.models.load(model))
            done, _ = await asyncio.wait({load, asyncio.ensure_future(stop.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if load not in done:
                load.cancel()
                break
            load.result()
    except (errors.ModelLoadError, errors.IntegrityError) as exc:
        log.error("%s", exc)
        notifier.stopping(f"failed: {exc}")
        stop.set()
        await server.drain(0.0)
        await pinger
        return ExitCode.INTEGRITY if isinstance(exc, errors.IntegrityError) \
            else ExitCode.MODEL_LOAD
    if not stop.is_set():
        await server.mark_serving()
        log.info("serving %d model(s) on %s", len(models), ", ".join(server.bound))
        if ready_file:
            _write_ready_file(ready_file, server.bound, metrics_addr, server.http_bound)
        notifier.ready(f"serving {len(models)} model(s) on {', '.join(server.bound)}")
        reloader.started()
        await stop.wait()
        await reloader.wait()
    notifier.stopping("draining")
    await server.drain(config.server.grace_period_s)
    await pinger
    return ExitCode.OK


def main(args: argparse.Namespace) -> int:
    # Decrypted weights and the master key live in this process; a core dump
    # would write them to disk in the clear.  The unit says LimitCORE=0 too,
    # but the daemon must not depend on how it was started.
    if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except OSError as exc:   # a seccomp filter without @resources, say
            log.warning("could not disable core dumps: %s", exc)
    try:
        config, models = build_config(args)
    except errors.ConfigError as exc:
        setup_logging()
        log.error("%s", exc)
        return ExitCode.CONFIG
    setup_logging(config.server.log_level, config.server.log_format)
    store = open_store(args, models)
    audit = None
    try:
        if store is not None and config.server.audit:
            audit = AuditLog(store, content=config.server.audit_content)
            audit.start()
            log.info("audit log: %s (content %s)", audit.path,
                     "on" if audit.content else "off")
        elif store is None:
            log.info("no master key given: serving plaintext models only, no audit log")
        return asyncio.run(run(config, models, args.ready_file, store, audit,
                               reload_config=lambda: build_config(args)))
    finally:
        if audit is not None:
            audit.close()
        if store is not None:
            store.close()
