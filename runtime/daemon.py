"""The daemon's life: compose the parts, start, load, serve, reload, drain.

`hearth serve` (cli/serve.py) only turns its arguments into a Config and the
models to load, then calls serve().  Everything after that is here:

  serve()         no core dumps, logging, the sealed store and audit log,
                  then run() on an asyncio loop; closes them on the way out
  run()           signals (TERM/INT stop, HUP reloads), listeners, metrics,
                  the systemd watchdog, the configured models, the ready file
                  and READY=1, then waits and drains
  build_daemon()  one ModelManager, InferenceService and Authenticator, with
                  the faces over them: gRPC (server/) and HTTP (http/), and the
                  drift watch (drift/service.py) when [drift] is on, and the
                  energy accountant (energy/service.py) when [energy] is on
  build_site_agent()  a joined federation site's alarms, auto-apply and
                  automatic rollback (federation/site_agent.py), when asked
  build_retainer()    traffic kept for training (drift/retain.py), when asked
  Daemon          those parts and their start / mark_serving / drain

Start-up failures end with an exit code (runtime/exit_codes.py) that systemd
acts on: CONFIG, LISTEN, MODEL_LOAD or INTEGRITY.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import errors
from runtime.auth.authenticator import Authenticator
from runtime.auth.tokens import TokenStore
from runtime.config import Config, ModelConfig
from runtime.config_values import is_local_address
from runtime.core import InferenceService
from runtime.core.response_cache import ResponseCache
from runtime.energy.service import EnergyService
from runtime.events import EventBus, ModelStateChanged, RequestFinished
from runtime.exit_codes import ExitCode
from runtime.logs import setup_logging
from runtime.models.gpu_fallback import cpu_fallback
from runtime.models.manager import ModelManager
from runtime.reload import Reloader
from runtime.server import GrpcServer
from runtime.storage.audit import AuditLog
from runtime.storage.fsutil import atomic_write
from runtime.storage.store import SealedStore
from runtime.systemd import Notifier, watchdog

# What only a configured feature needs is imported where it is built: the
# drift watch (numpy), the HTTP gateway (aiohttp), metrics (prometheus_client)
# and the federation site agent (x509).  A daemon without them stays about
# 30 MB smaller (benchmarks/rss.py; tests/test_serving_imports.py).
if TYPE_CHECKING:
    from runtime.drift.retain import TrafficRetainer
    from runtime.drift.service import DriftService
    from runtime.federation.site_agent import SiteAgent
    from runtime.http import HttpGateway

log = logging.getLogger("hearth.serve")
PRUNE_EVERY_S = 3600.0          # audit retention runs at start and hourly
server_log = logging.getLogger("hearth.server")   # listeners, requests, drain

ConfigSource = Callable[[], tuple[Config, list[ModelConfig]]]


class Daemon:
    """The composed daemon: models, core and auth, and the faces that serve
    them.  Nothing is bound or loaded until start() and models.load()."""

    def __init__(self, config: Config, events: EventBus, models: ModelManager,
                 core: InferenceService, authenticator: Authenticator,
                 drift: DriftService | None = None,
                 energy: EnergyService | None = None) -> None:
        self.config = config
        self.events = events
        self.models = models
        self.core = core
        self.authenticator = authenticator
        self.drift = drift          # the drift watch, when [drift] is on
        self.energy = energy        # energy accounting, when [energy] is on
        self.grpc = GrpcServer(config, models, core, events, authenticator, drift)
        # The OpenAI-compatible HTTP gateway, over the same core and auth.
        self.http: HttpGateway | None = None
        if config.server.http_listen:
            from runtime.http import HttpGateway

            self.http = HttpGateway(core, authenticator, config.server.max_receive_message_bytes)
        self.http_bound = ""

    @property
    def bound(self) -> list[str]:
        return self.grpc.bound

    async def start(self) -> None:
        await self.grpc.start()
        if self.http is not None:
            self.http_bound = await self.http.start(self.config.server.http_listen)
        server_log.info("listening on %s", ", ".join(self.bound))

    async def mark_serving(self) -> None:
        await self.grpc.mark_serving()

    async def drain(self, grace: float) -> None:
        """Stops admission, flips health to NOT_SERVING, lets running streams
        finish within `grace`, cancels what is left, frees the models and
        stops the faces."""
        server_log.info("draining: no new requests; running streams have %.0fs to finish", grace)
        self.core.draining = True
        await self.grpc.stop_serving()
        await self.models.shutdown(grace)
        await self.grpc.stop()
        if self.http is not None:
            await self.http.stop()
        server_log.info("stopped")


def log_request(event: RequestFinished) -> None:
    """One structured line per request (ids and figures as JSON fields)."""
    server_log.info(
        "%s %s %s %s", event.kind, event.model, event.status, event.finish_reason, extra={
            "request_id": event.request_id, "client": event.client,
            "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "cached_tokens": event.cached_tokens, "queue_s": round(event.queue_s, 4),
            "ttft_s": round(event.ttft_s, 4), "total_s": round(event.total_s, 4)})


def build_daemon(config: Config, events: EventBus | None = None,
                 store: SealedStore | None = None) -> Daemon:
    """Builds the model manager, core and authenticator, and the faces over
    them; nothing is bound or loaded until start() and ModelManager.load()."""
    events = events or EventBus()
    events.subscribe(log_request, RequestFinished)
    models = ModelManager(config, events, store)
    cache = ResponseCache(config.server.response_cache_mb << 20,
                          config.server.response_cache_shared)
    core = InferenceService(models, events, config.server.max_tokens_default, cache)
    tokens = TokenStore(store) if store is not None else None
    authenticator = Authenticator(config.auth, config.acl, tokens)
    drift = None
    if config.drift.enabled:
        from runtime.drift.service import DriftService

        drift = DriftService(config.drift, events, store)
        core.drift_sample = drift.should_sample
    energy = None
    if config.energy.enabled:
        energy = EnergyService(config.energy, models, store, events=events)
        core.energy = energy
    return Daemon(config, events, models, core, authenticator, drift, energy)


def write_ready_file(path: str, addresses: list[str], metrics: str, http: str = "") -> None:
    atomic_write(Path(path), json.dumps({"pid": os.getpid(), "addresses": addresses,
                                         "metrics": metrics, "http": http}).encode(),
                 mode=0o666)    # the umask decides, as before


def start_metrics(daemon: Daemon, audit: AuditLog | None) -> str:
    addr = daemon.config.server.metrics_listen
    if not addr:
        return ""
    if not is_local_address(addr):
        raise errors.ConfigError(f"server.metrics_listen: {addr} is not a loopback address")
    from runtime.server.metrics import Metrics

    metrics = Metrics(daemon.events, daemon.models, (lambda: audit.lag_s) if audit else None,
                      daemon.core.cache, daemon.drift, daemon.energy)
    port = metrics.serve(addr)
    return f"{addr.rpartition(':')[0]}:{port}"


def engine_heartbeats(daemon: Daemon) -> dict[str, int]:
    beats = {}
    for handle in daemon.models.handles():
        stats = handle.engine.stats_if_open() if handle.engine is not None else None
        if stats is not None:
            beats[handle.name] = stats.last_heartbeat_ns
    return beats


async def _load_models(daemon: Daemon, models: list[ModelConfig], notifier: Notifier,
                       stop: asyncio.Event) -> None:
    """The configured models, one after the other; a stop signal meanwhile
    cancels the load in progress.  A model split over RPC workers depends on
    other machines: its failure (logged, the model FAILED until a reload
    tries again) does not keep this box from serving the rest."""
    for model in models:
        notifier.status(f"loading model {model.name}")
        load = asyncio.ensure_future(daemon.models.load(model))
        done, _ = await asyncio.wait({load, asyncio.ensure_future(stop.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        if load not in done:
            load.cancel()
            return
        try:
            load.result()
        except errors.ModelLoadError:
            if not model.rpc_workers:
                raise


async def run(config: Config, models: list[ModelConfig], ready_file: str | None = None,
              store: SealedStore | None = None, audit: AuditLog | None = None,
              reload_config: ConfigSource | None = None) -> int:
    notifier = Notifier()
    events = EventBus()
    daemon = build_daemon(config, events, store=store)
    if audit is not None:
        events.subscribe(audit.record, RequestFinished)
        events.subscribe(model_changes_to(audit), ModelStateChanged)
        daemon.core.collect_content = audit.content
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        retainer = build_retainer(daemon, audit)
        agent = build_site_agent(daemon, models, store, audit)
    except errors.ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG
    if daemon.drift is not None:
        daemon.drift.audit = audit.record_admin if audit is not None else None
        daemon.drift.start(loop)
    if daemon.energy is not None:
        daemon.energy.start(loop)
    if retainer is not None:
        retainer.start()
    if agent is not None:
        agent.start(loop)
    try:
        return await _serve(daemon, config, models, ready_file, audit, reload_config,
                            notifier, stop)
    finally:
        if agent is not None:
            await loop.run_in_executor(None, agent.close)
        if daemon.drift is not None:
            daemon.drift.close()
        if daemon.energy is not None:
            daemon.energy.close()
        if retainer is not None:
            retainer.close()


def build_retainer(daemon: Daemon, audit: AuditLog | None) -> TrafficRetainer | None:
    """[drift] retain_for_training: the sampled requests' prompts, sealed per
    subject under the audit log's erasable keys (drift/retain.py)."""
    cfg = daemon.config.drift
    if not cfg.retain_for_training:
        return None
    if daemon.drift is None or audit is None:
        raise errors.ConfigError("drift.retain_for_training: keeps the prompts of requests "
                                 "the drift watch samples, sealed under the audit log's "
                                 "per-subject keys: it needs [drift] enabled, the sealed "
                                 "store and server.audit")
    from runtime.drift.retain import TrafficRetainer

    retainer = TrafficRetainer(audit, cfg.retention_days)
    daemon.events.subscribe(retainer.on_request, RequestFinished)
    daemon.core.collect_content = True      # the audit log seals it only with audit_content
    log.warning("drift: keeping the prompts of sampled requests for training, %d days "
                "(docs/drift.md, \"Keeping traffic for training\")", cfg.retention_days)
    return retainer


def build_site_agent(daemon: Daemon, models: list[ModelConfig], store: SealedStore | None,
                     audit: AuditLog | None) -> SiteAgent | None:
    """[federation] report_alarms / report_dir / auto_apply on a joined site."""
    cfg = daemon.config.federation
    if not (cfg.report_alarms or cfg.report_dir or cfg.auto_apply):
        return None
    if store is None:
        raise errors.ConfigError("federation: reporting alarms and applying releases need "
                                 "the sealed store of a joined site (give the master key)")
    from runtime.federation.site_agent import SiteAgent, federation_models
    from runtime.federation.state import SiteContext

    try:
        site = SiteContext.open(store)
    except errors.FailedPrecondition as exc:
        raise errors.ConfigError(f"federation: {exc}") from None
    served = federation_models(cfg, models, site.record.base_model_path)
    drift = daemon.drift
    return SiteAgent(cfg, store, served, daemon.events, daemon.models.set_adapter,
                     audit.record_admin if audit is not None else None,
                     (lambda v: drift.reset(v, actor="federation")) if drift else None)


def model_changes_to(audit: AuditLog) -> Callable[[ModelStateChanged], None]:
    """Model loads and unloads into the audit log (the transparency report's
    change log), off the event loop (an admin record reads the chain), in
    the order they happened."""
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hearth-audit-admin")

    def record(event: ModelStateChanged) -> None:
        if event.state not in ("ready", "unloaded", "failed"):
            return
        detail = {"model": event.name, "state": event.state, "error": event.error}
        future = writer.submit(audit.record_admin, "model." + event.state, detail)
        def failed(f: concurrent.futures.Future[None]) -> None:
            if f.exception() is not None:
                log.error("audit: model %s %s not recorded: %s", event.name, event.state,
                          f.exception())

        future.add_done_callback(failed)
    return record


async def _serve(daemon: Daemon, config: Config, models: list[ModelConfig],
                 ready_file: str | None, audit: AuditLog | None,
                 reload_config: ConfigSource | None, notifier: Notifier,
                 stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = Reloader(daemon, reload_config or (lambda: (config, models)), models, notifier)
    # SIGHUP's default action would kill the daemon; from here on it reloads
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    try:
        await daemon.start()
        metrics_addr = start_metrics(daemon, audit)
    except errors.ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG
    except errors.Unavailable as exc:
        log.error("%s", exc)
        return ExitCode.LISTEN
    pinger = asyncio.ensure_future(watchdog(notifier, lambda: engine_heartbeats(daemon), stop))
    pruner = (asyncio.ensure_future(prune_audit(audit, config.audit.retention_days, stop))
              if audit is not None else None)
    try:
        await _load_models(daemon, models, notifier, stop)
    except (errors.ModelLoadError, errors.IntegrityError) as exc:
        log.error("%s", exc)
        notifier.stopping(f"failed: {exc}")
        stop.set()
        await daemon.drain(0.0)
        await pinger
        if pruner is not None:
            await pruner
        return ExitCode.INTEGRITY if isinstance(exc, errors.IntegrityError) \
            else ExitCode.MODEL_LOAD
    if not stop.is_set():
        await daemon.mark_serving()
        log.info("serving %d model(s) on %s", len(models), ", ".join(daemon.bound))
        if ready_file:
            write_ready_file(ready_file, daemon.bound, metrics_addr, daemon.http_bound)
        notifier.ready(f"serving {len(models)} model(s) on {', '.join(daemon.bound)}")
        reloader.started()
        await stop.wait()
        await reloader.wait()
    notifier.stopping("draining")
    await daemon.drain(config.server.grace_period_s)
    await pinger
    if pruner is not None:
        await pruner
    return ExitCode.OK


async def prune_audit(audit: AuditLog, retention_days: int, stop: asyncio.Event,
                      every_s: float = PRUNE_EVERY_S) -> None:
    """Retention: crypto-shreds audit records older than `retention_days`
    at start and then every `every_s` until the daemon stops.  A failure is
    logged and retried at the next turn; serving goes on."""
    while not stop.is_set():
        try:
            pruned = await asyncio.to_thread(audit.prune, retention_days)
            if pruned.epochs:
                log.info("audit retention: shredded %d day(s) older than %d days",
                         len(pruned.epochs), retention_days)
        except Exception as exc:
            log.error("audit retention failed, will retry: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


MALLOC_ARENAS = 2       # glibc's own limit is 8 per core
M_ARENA_MAX = -8        # mallopt's parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """glibc gives each new thread that allocates an arena of its own (up to
    8 per core) and keeps what each arena once held; the gRPC, executor and
    engine threads then each keep megabytes that one busy minute made
    resident.  Two arenas: 5 MB less peak RSS at 16 streams on Gemma
    (benchmarks/rss.py).  MALLOC_ARENA_MAX in the environment wins; without
    glibc's mallopt, nothing changes."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, arenas)


def disable_core_dumps() -> None:
    """Decrypted weights and the master key live in this process; a core
    dump would write them to disk in the clear.  The unit says LimitCORE=0
    too, but the daemon must not depend on how it was started."""
    if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except OSError as exc:   # a seccomp filter without @resources, say
            log.warning("could not disable core dumps: %s", exc)


def serve(config: Config, models: list[ModelConfig],
          open_store: Callable[[], SealedStore | None], ready_file: str | None = None,
          reload_config: ConfigSource | None = None) -> int:
    """Runs the daemon until SIGTERM/SIGINT; returns its exit code.
    `open_store` is called once logging is set up (it may read a key)."""
    limit_malloc_arenas()   # before the threads that would each take one
    setup_logging(config.server.log_level, config.server.log_format)
    fallback = cpu_fallback()
    if fallback:
        log.warning("%s", fallback)
    store = open_store()
    audit = None
    try:
        if store is not None and config.server.audit:
            audit = AuditLog(store, content=config.server.audit_content)
            audit.start()
            log.info("audit log: %s (content %s)", audit.path,
                     "on" if audit.content else "off")
        elif store is None:
            log.info("no master key given: serving plaintext models only, no audit log")
        return asyncio.run(run(config, models, ready_file, store, audit,
                               reload_config=reload_config))
    finally:
        if audit is not None:
            audit.close()
        if store is not None:
            store.close()
