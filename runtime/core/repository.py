"""The model repository: list, get, load, unload and adapters, with the
access checks, written once for every transport.

hearth.v1 Models, KServe's repository and metadata RPCs, the OpenAI
gateway's /v1/models and the core's own model lookups all call this; the
faces only convert requests and replies.  The rules:

- A caller sees only the models its ACL allows.  A name it may not use is
  refused before the model is looked up, so it learns nothing about that
  model, and an ambiguous empty name lists only the models it may use.
- Load, unload and adapters need an admin: a name in auth.admins, root or
  the daemon's own uid on the unix socket, an admin token, or a caller
  without credentials where [auth] anonymous_admin = true.
"""
from __future__ import annotations

from dataclasses import dataclass

from runtime.auth.principal import Principal
from runtime.models.manager import ModelHandle, ModelManager, ModelState
from runtime.names import check_name
from runtime.sources import StoredSource


@dataclass(frozen=True)
class RepositoryIndex:
    loaded: list[ModelHandle]     # in any state
    available: list[str]          # names Load accepts that are not loaded


class ModelRepository:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    # ---- what a caller may see -------------------------------------------

    def index(self, caller: Principal) -> RepositoryIndex:
        return RepositoryIndex(
            loaded=[h for h in self.models.handles() if caller.may_use(h.name)],
            available=[n for n in self.models.available() if caller.may_use(n)])

    def get(self, name: str, caller: Principal) -> ModelHandle:
        """The named model in any state; an empty name means the only ready
        model."""
        if name:
            caller.check_model(name)
        handle = self.models.get(name, caller.may_use)
        caller.check_model(handle.name)
        return handle

    def ready(self, name: str, caller: Principal) -> ModelHandle:
        """Like get, for a model that can serve requests now."""
        if name:
            caller.check_model(name)
        handle = self.models.ready(name, caller.may_use)
        caller.check_model(handle.name)
        return handle

    def serving(self) -> bool:
        """Whether any model is ready (open health checks name none)."""
        return any(h.state is ModelState.READY for h in self.models.handles())

    def loaded(self, name: str) -> ModelHandle | None:
        return next((h for h in self.models.handles() if h.name == name), None)

    # ---- what an admin may change ----------------------------------------

    async def load(self, name: str, caller: Principal, n_ctx: int | None = None,
                   n_parallel: int | None = None, keep_ready: bool = False) -> ModelHandle:
        """Loads a model by name.  With keep_ready, a model that is already
        ready is left as it is (KServe's Load without parameters)."""
        caller.check_admin("load models")
        loaded = self.loaded(name)
        if keep_ready and loaded is not None and loaded.state is ModelState.READY:
            return loaded
        return await self.models.load_by_name(name, n_ctx=n_ctx, n_parallel=n_parallel)

    async def unload(self, name: str, caller: Principal,
                     drain_timeout_s: float | None = None) -> ModelHandle:
        """Drains running requests first (for drain_timeout_s, by default the
        server's grace period), then frees the model."""
        caller.check_admin("unload models")
        if drain_timeout_s is None:
            drain_timeout_s = self.models.config.server.grace_period_s
        return await self.models.unload(name, drain_timeout_s)

    async def set_adapter(self, model: str, adapter: str, stored_name: str,
                          caller: Principal) -> ModelHandle:
        """Loads the sealed adapter `stored_name` as `adapter` of a ready
        model (hot swap)."""
        caller.check_admin("set adapters")
        check_name(stored_name, "stored_name")
        return await self.models.set_adapter(model, adapter, StoredSource(stored_name))

    async def remove_adapter(self, model: str, adapter: str, caller: Principal) -> ModelHandle:
        caller.check_admin("remove adapters")
        return self.models.remove_adapter(model, adapter)
