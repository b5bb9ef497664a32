"""The gRPC server: create_server() builds it, HearthServer runs its life.

Lifecycle: start() binds every listen address and answers health checks at
once (NOT_SERVING while models load); mark_serving() flips health to SERVING;
drain(grace) stops admission, flips health to NOT_SERVING, lets running
streams finish within the grace period, cancels what is left, frees the
models and stops the server.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import errors
from runtime._proto.hearth.v1 import inference_pb2, models_pb2
from runtime.config import Config
from runtime.core import InferenceService
from runtime.events import EventBus, RequestFinished
from runtime.models.manager import ModelManager
from runtime.server.health import NOT_SERVING, HealthTracker
from runtime.server.registry import add_service
from runtime.server.servicers import InferenceServicer, ModelsServicer
from runtime.storage.store import SealedStore

log = logging.getLogger("hearth.server")

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
MODELS = models_pb2.DESCRIPTOR.services_by_name["Models"]
HEALTH_NAME = "grpc.health.v1.Health"


def is_local_address(addr: str) -> bool:
    """unix sockets and loopback hosts; anything else needs authentication."""
    if addr.startswith("unix:"):
        return True
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HearthServer:
    def __init__(self, config: Config, models: ModelManager, core: InferenceService,
                 events: EventBus) -> None:
        self.config = config
        self.models = models
        self.core = core
        s = config.server
        self.grpc = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        add_service(self.grpc, INFERENCE, InferenceServicer(core))
        add_service(self.grpc, MODELS, ModelsServicer(models, s.grace_period_s))
        self.health = HealthTracker(events, [INFERENCE.full_name, MODELS.full_name])
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.grpc)
        reflection.enable_server_reflection(
            [INFERENCE.full_name, MODELS.full_name, HEALTH_NAME, reflection.SERVICE_NAME],
            self.grpc)
        self.bound: list[str] = []

    async def start(self) -> None:
        for addr in self.config.server.listen:
            if not is_local_address(addr):
                raise errors.ConfigError(
                    f"server.listen: refusing to listen on {addr} without authentication; this "
                    "build serves loopback and unix sockets only (use 127.0.0.1:PORT or "
                    "unix:PATH)")
            if addr.startswith("unix:"):
                path = addr[len("unix:"):]
                if os.path.exists(path) and not os.path.isdir(path):
                    os.unlink(path)  # a stale socket from a previous run
            try:
                port = self.grpc.add_insecure_port(addr)
            except RuntimeError as exc:
                raise errors.Unavailable(f"cannot listen on {addr}: {exc}") from exc
            if addr.startswith("unix:"):
                os.chmod(addr[len("unix:"):], 0o660)
                self.bound.append(addr)
            else:
                self.bound.append(f"{addr.rpartition(':')[0]}:{port}")
        await self.grpc.start()
        for service in ("", INFERENCE.full_name, MODELS.full_name):
            await self.health.servicer.set(service, NOT_SERVING)  # until models load
        log.info("listening on %s", ", ".join(self.bound))

    @property
    def ports(self) -> list[int]:
        return [int(a.rpartition(":")[2]) for a in self.bound if not a.startswith("unix:")]

    async def mark_serving(self) -> None:
        await self.health.serving()

    async def drain(self, grace: float) -> None:
        log.info("draining: no new requests; running streams have %.0fs to finish", grace)
        self.core.draining = True
        await self.health.shutting_down()
        await self.models.shutdown(grace)
        await self.grpc.stop(grace=1.0)
        for addr in self.bound:
            if addr.startswith("unix:"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr[len("unix:"):])
        log.info("stopped")


def log_request(event: RequestFinished) -> None:
    """One structured line per request (ids and figures as JSON fields)."""
    log.info("%s %s %s %s", event.kind, event.model, event.status, event.finish_reason, extra={
        "request_id": event.request_id, "client": event.client,
        "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
        "cached_tokens": event.cached_tokens, "queue_s": round(event.queue_s, 4),
        "ttft_s": round(event.ttft_s, 4), "total_s": round(event.total_s, 4)})


def create_server(config: Config, events: EventBus | None = None,
                  store: SealedStore | None = None) -> HearthServer:
    """Builds the server and its model manager and core; nothing is bound or
    loaded until start() and ModelManager.load()."""
    events = events or EventBus()
    events.subscribe(log_request, RequestFinished)
    models = ModelManager(config, events, store)
    core = InferenceService(models, events, config.server.max_tokens_default)
    return HearthServer(config, models, core, events)
