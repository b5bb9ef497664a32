"""grpc.health.v1 statuses, following the server and model lifecycle.

Service names: "" (the whole server), the two Hearth services, and each
model by its name.  A model is NOT_SERVING while loading or draining and
SERVICE_UNKNOWN once unloaded.
"""
from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

from runtime.events import EventBus, ModelStateChanged

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_MODEL_STATUS = {"ready": SERVING, "loading": NOT_SERVING, "draining": NOT_SERVING,
                 "failed": NOT_SERVING, "unloaded": UNKNOWN}


class HealthTracker:
    def __init__(self, events: EventBus, services: list[str]) -> None:
        self.servicer = health.aio.HealthServicer()
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
