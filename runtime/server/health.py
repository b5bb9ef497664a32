"""grpc.health.v1 statuses, following the server and model lifecycle.

Service names: "" (the whole server), the Hearth services, and each model
by its name.  A model is NOT_SERVING while loading or draining and
SERVICE_UNKNOWN once unloaded.

The server and service names are open to every caller (load balancers ask
without credentials).  A model's name is answered only to a caller the
authenticator admits and whose ACL allows that model; anyone else gets the
answer a name that does not exist gets, so health reveals no model names.
"""
from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health, health_pb2

from runtime.auth.authenticator import Authenticator
from runtime.errors import HearthError
from runtime.events import EventBus, ModelStateChanged

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_MODEL_STATUS = {"ready": SERVING, "loading": NOT_SERVING, "draining": NOT_SERVING,
                 "failed": NOT_SERVING, "unloaded": UNKNOWN}


# Never set, so asking about it gets the stock answer for an unknown name
# (no model or service name contains '/').
_NOBODY = "hearth/not-a-service"


class GuardedHealthServicer(health.aio.HealthServicer):
    """The stock servicer, with model names behind authentication and ACLs."""

    def __init__(self, open_names: list[str], authenticator: Authenticator | None) -> None:
        super().__init__()
        self._open = frozenset(["", *open_names])
        self._authenticator = authenticator

    def _visible(self, request: Any, context: Any) -> Any:
        if self._authenticator is None or request.service in self._open:
            return request
        try:
            caller = self._authenticator.authenticate(context)
        except HearthError:
            return health_pb2.HealthCheckRequest(service=_NOBODY)
        if not caller.may_use(request.service):
            return health_pb2.HealthCheckRequest(service=_NOBODY)
        return request

    async def Check(self, request: Any, context: Any) -> Any:
        return await super().Check(self._visible(request, context), context)

    async def Watch(self, request: Any, context: Any) -> None:
        await super().Watch(self._visible(request, context), context)


class HealthTracker:
    def __init__(self, events: EventBus, services: list[str],
                 authenticator: Authenticator | None = None) -> None:
        self.servicer = GuardedHealthServicer(services, authenticator)
        self._services = services
        self._pending: set[asyncio.Task] = set()
        events.subscribe(self._on_model, ModelStateChanged)

    def _schedule(self, service: str, status: int) -> None:
        task = asyncio.get_running_loop().create_task(self.servicer.set(service, status))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _on_model(self, event: ModelStateChanged) -> None:
        self._schedule(event.name, _MODEL_STATUS.get(event.state, NOT_SERVING))

    async def serving(self) -> None:
        for name in ["", *self._services]:
            await self.servicer.set(name, SERVING)

    async def shutting_down(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self.servicer.enter_graceful_shutdown()
