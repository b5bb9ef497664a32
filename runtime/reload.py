"""SIGHUP: re-read the configuration and apply it without dropping streams.

Applied live: models added, removed or changed (a removed or changed model is
drained first: its running streams finish within server.grace_period_s),
[auth] require/admins, [acl], tokens (the lookup cache is dropped),
max_tokens_default, models_dir, log level and format.  Settings that need
the listeners or the process rebuilt (listen addresses, TLS, message limits,
metrics, audit) are reported and keep their running values until a restart.
A configuration that does not load, or that would loosen authentication
under a listener already bound, is refused whole: the daemon keeps serving
with what it had.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from runtime import errors
from runtime.config import Config, ModelConfig, check_listeners
from runtime.logs import setup_logging
from runtime.models.manager import ModelState
from runtime.systemd import Notifier

if TYPE_CHECKING:    # daemon.py runs the Reloader, so it imports this module
    from runtime.daemon import Daemon

log = logging.getLogger("hearth.reload")

RESTART_ONLY_SERVER = ("listen", "max_receive_message_bytes", "max_send_message_bytes",
                       "grace_period_s", "metrics_listen", "http_listen", "audit",
                       "audit_content")


@dataclass
class ReloadOutcome:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    refused: str = ""


def effective_config(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The new config with restart-only settings kept at their running
    values, and the names of those that differ."""
    changed = [f"server.{k}" for k in RESTART_ONLY_SERVER
               if getattr(old.server, k) != getattr(new.server, k)]
    if old.tls != new.tls:
        changed.append("tls")
    if old.auth.socket_mode != new.auth.socket_mode:
        changed.append("auth.socket_mode")
    server = replace(new.server, **{k: getattr(old.server, k) for k in RESTART_ONLY_SERVER})
    auth = replace(new.auth, socket_mode=old.auth.socket_mode)
    return replace(new, server=server, auth=auth, tls=old.tls), changed


class Reloader:
    def __init__(self, daemon: Daemon, load: Callable[[], tuple[Config, list[ModelConfig]]],
                 managed: list[ModelConfig], notifier: Notifier | None = None) -> None:
        self.daemon = daemon
        self.load = load
        # the models the configuration (not Models.Load) brought in
        self.managed = {m.name for m in managed}
        self.notifier = notifier or Notifier()
        self.ready = False          # the first loads are done
        self._pending = False
        self._task: asyncio.Task | None = None

    def request(self) -> None:
        """From the signal handler: reload now, or once the running reload
        (or start-up) is over; several signals meanwhile make one reload."""
        self._pending = True
        if self.ready and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._run())

    def started(self) -> None:
        self.ready = True
        if self._pending:
            self.request()

    async def wait(self) -> None:
        """At shutdown: no further reloads; lets one in progress finish."""
        self.ready = self._pending = False
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while self._pending:
            self._pending = False
            self.notifier.notify("RELOADING=1\nSTATUS=reloading the configuration")
            try:
                outcome = await self.reload_once()
            except Exception:   # the daemon must survive whatever a reload hits
                log.exception("reload failed")
                outcome = ReloadOutcome(refused="internal error")
            loaded = len([h for h in self.daemon.models.handles()
                          if h.state is ModelState.READY])
            self.notifier.ready(f"serving {loaded} model(s); last reload "
                                f"{'refused' if outcome.refused else 'applied'}")

    async def reload_once(self) -> ReloadOutcome:
        out = ReloadOutcome()
        old = self.daemon.config
        try:
            new, models = self.load()
            config, out.needs_restart = effective_config(old, new)
            check_listeners(config)
        except errors.HearthError as exc:
            out.refused = str(exc)
            log.error("reload refused, still serving with the previous configuration: %s", exc)
            return out
        for key in out.needs_restart:
            log.warning("reload: %s changed; it takes effect at the next restart", key)
        self._apply_settings(config)
        await self._apply_models({m.name: m for m in models}, out)
        log.info("reloaded the configuration: loaded %s, unloaded %s, reloaded %s, failed %s",
                 out.loaded or "-", out.unloaded or "-", out.reloaded or "-", out.failed or "-")
        return out

    def _apply_settings(self, config: Config) -> None:
        s = self.daemon
        s.config = config
        s.models.config = config
        s.core.max_tokens_default = config.server.max_tokens_default
        s.authenticator.config = config.auth
        s.authenticator.acl = config.acl
        if s.authenticator.tokens is not None:
            s.authenticator.tokens.forget_cached()
        setup_logging(config.server.log_level, config.server.log_format)

    async def _apply_models(self, desired: dict[str, ModelConfig], out: ReloadOutcome) -> None:
        manager = self.daemon.models
        grace = self.daemon.config.server.grace_period_s
        current = {h.name: h for h in manager.handles()}
        gone = [n for n in sorted(self.managed) if n not in desired and n in current]
        changed = [n for n, cfg in sorted(desired.items()) if n in current
                   and current[n].state is not ModelState.FAILED and current[n].config != cfg]
        # new names, and those whose last load failed (a fixed file, say)
        added = [n for n in sorted(desired)
                 if n not in current or current[n].state is ModelState.FAILED]
        # removals first: their memory may be what the new models need
        results = await asyncio.gather(*(manager.unload(n, grace) for n in gone + changed),
                                       return_exceptions=True)
        for name, result in zip(gone + changed, results, strict=True):
            if isinstance(result, BaseException):
                log.error("reload: could not unload %s: %s", name, result)
                out.failed.append(name)
            elif name in gone:
                out.unloaded.append(name)
        for name in changed + added:
            if name in out.failed:
                continue
            try:
                await manager.load(desired[name])
            except errors.HearthError as exc:
                log.error("reload: model %s did not load: %s", name, exc)
                out.failed.append(name)
                continue
            (out.reloaded if name in changed else out.loaded).append(name)
        self.managed = set(desired)
