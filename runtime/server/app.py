"""The gRPC face: GrpcServer serves the services over parts it is given.

It registers hearth.v1.Inference and Models, KServe v2, health and
reflection on one grpc.aio server and binds every listener: TCP, TLS, and
unix sockets through the SO_PEERCRED front (auth/peercred.py).  It composes
nothing else: the model manager, the core and the authenticator come from
runtime/daemon.py, which also runs its life:

  start()          binds and answers health checks at once (NOT_SERVING
                   while models load)
  mark_serving()   health SERVING, KServe ServerReady true
  stop_serving()   health NOT_SERVING (the daemon then drains the models)
  stop()           closes the unix fronts and stops the server
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import errors
from runtime._proto.hearth.v1 import inference_pb2, models_pb2
from runtime._proto.kserve.v2 import inference_pb2 as kserve_pb2
from runtime.auth.authenticator import Authenticator
from runtime.auth.peercred import UnixPeerFront
from runtime.auth.tls import server_credentials
from runtime.config import Config, check_listeners
from runtime.core import InferenceService
from runtime.core.explain import Explainer
from runtime.events import EventBus
from runtime.models.manager import ModelManager
from runtime.server.health import NOT_SERVING, HealthTracker
from runtime.server.kserve import KServeServicer
from runtime.server.registry import add_service
from runtime.server.servicers import InferenceServicer, ModelsServicer

if TYPE_CHECKING:   # the drift watch (and numpy) load only when [drift] is on
    from runtime.drift.service import DriftService

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
MODELS = models_pb2.DESCRIPTOR.services_by_name["Models"]
KSERVE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
HEALTH_NAME = "grpc.health.v1.Health"


class GrpcServer:
    def __init__(self, config: Config, models: ModelManager, core: InferenceService,
                 events: EventBus, authenticator: Authenticator,
                 drift: DriftService | None = None) -> None:
        self.config = config        # read when binding: listeners, TLS, socket mode
        s = config.server
        self.grpc = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        add_service(self.grpc, INFERENCE,
                    InferenceServicer(core, Explainer(core, config.explain)), authenticator)
        add_service(self.grpc, MODELS, ModelsServicer(core.repository, drift),
                    authenticator)
        self.serving = False      # between mark_serving() and drain(): KServe's ServerReady
        add_service(self.grpc, KSERVE, KServeServicer(core, events, lambda: self.serving),
                    authenticator)
        self.health = HealthTracker(events, [INFERENCE.full_name, MODELS.full_name,
                                             KSERVE.full_name], authenticator)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.grpc)
        reflection.enable_server_reflection(
            [INFERENCE.full_name, MODELS.full_name, KSERVE.full_name, HEALTH_NAME,
             reflection.SERVICE_NAME],
            self.grpc)
        self.bound: list[str] = []
        self._fronts: list[UnixPeerFront] = []
        self._socket_dir: str | None = None

    def _add_port(self, addr: str, credentials: grpc.ServerCredentials | None = None) -> int:
        try:
            if credentials is None:
                return self.grpc.add_insecure_port(addr)
            return self.grpc.add_secure_port(addr, credentials)
        except RuntimeError as exc:
            raise errors.Unavailable(f"cannot listen on {addr}: {exc}") from exc

    def _bind(self) -> None:
        """Binds every listener (after check_listeners); unix sockets go
        through the SO_PEERCRED front."""
        auth, tls = self.config.auth, self.config.tls
        check_listeners(self.config)
        for addr in self.config.server.listen:
            if addr.startswith("unix:"):
                if self._socket_dir is None:
                    self._socket_dir = tempfile.mkdtemp(
                        prefix="hearth-sock-", dir=os.environ.get("RUNTIME_DIRECTORY"))
                internal = os.path.join(self._socket_dir, f"grpc-{len(self._fronts)}.sock")
                self._add_port("unix:" + internal)
                self._fronts.append(UnixPeerFront(addr[len("unix:"):], internal,
                                                  int(auth.socket_mode, 8)))
                self.bound.append(addr)
                continue
            port = self._add_port(addr)
            self.bound.append(f"{addr.rpartition(':')[0]}:{port}")
        if tls.listen:
            creds = server_credentials(tls.cert_file, tls.key_file, tls.client_ca_file)
            for addr in tls.listen:
                port = self._add_port(addr, creds)
                self.bound.append(f"tls:{addr.rpartition(':')[0]}:{port}")

    async def start(self) -> None:
        self._bind()
        await self.grpc.start()
        for front in self._fronts:
            await front.start()
        for service in ("", INFERENCE.full_name, MODELS.full_name, KSERVE.full_name):
            await self.health.servicer.set(service, NOT_SERVING)  # until models load

    async def mark_serving(self) -> None:
        self.serving = True
        await self.health.serving()

    async def stop_serving(self) -> None:
        self.serving = False
        await self.health.shutting_down()

    async def stop(self) -> None:
        for front in self._fronts:
            await front.close()
        await self.grpc.stop(grace=1.0)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
