"""The gRPC server: create_server() builds it, HearthServer runs its life.

Lifecycle: start() binds every listen address and answers health checks at
once (NOT_SERVING while models load); mark_serving() flips health to SERVING;
drain(grace) stops admission, flips health to NOT_SERVING, lets running
streams finish within the grace period, cancels what is left, frees the
models and stops the server.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import errors
from runtime._proto.hearth.v1 import inference_pb2, models_pb2
from runtime._proto.kserve.v2 import inference_pb2 as kserve_pb2
from runtime.auth.authenticator import Authenticator
from runtime.auth.peercred import UnixPeerFront
from runtime.auth.tls import server_credentials
from runtime.auth.tokens import TokenStore
from runtime.config import Config
from runtime.core import InferenceService
from runtime.core.response_cache import ResponseCache
from runtime.events import EventBus, RequestFinished
from runtime.http import HttpGateway
from runtime.models.manager import ModelManager
from runtime.server.health import NOT_SERVING, HealthTracker
from runtime.server.kserve import KServeServicer
from runtime.server.registry import add_service
from runtime.server.servicers import InferenceServicer, ModelsServicer
from runtime.storage.store import SealedStore

log = logging.getLogger("hearth.server")

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
MODELS = models_pb2.DESCRIPTOR.services_by_name["Models"]
KSERVE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
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


def check_listeners(config: Config) -> None:
    """Plain TCP beyond loopback needs tokens to be required; TLS needs client
    certificates or required tokens.  Checked at start and on every reload
    (which must not loosen authentication under a listener already bound)."""
    auth, tls = config.auth, config.tls
    for addr in config.server.listen:
        if not addr.startswith("unix:") and not is_local_address(addr) and not auth.require:
            raise errors.ConfigError(
                f"server.listen: refusing to listen on {addr} without authentication: "
                "set auth.require = true (bearer tokens), serve it with TLS and client "
                "certificates ([tls] listen, client_ca_file), or use 127.0.0.1:PORT or "
                "unix:PATH")
    http = config.server.http_listen
    if http and not is_local_address(http) and not auth.require:
        # HTTP has only bearer tokens (no client certificates, no socket uid)
        raise errors.ConfigError(
            f"server.http_listen: refusing to listen on {http} without authentication: "
            "set auth.require = true (bearer tokens) or use 127.0.0.1:PORT")
    if tls.listen and not tls.client_ca_file and not auth.require:
        raise errors.ConfigError(
            "tls: without client_ca_file (mTLS), TLS listeners need auth.require = "
            "true, or anyone who reaches the port could call")


class HearthServer:
    def __init__(self, config: Config, models: ModelManager, core: InferenceService,
                 events: EventBus, authenticator: Authenticator) -> None:
        self.config = config
        self.models = models
        self.core = core
        self.authenticator = authenticator
        s = config.server
        self.grpc = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        add_service(self.grpc, INFERENCE, InferenceServicer(core), authenticator)
        add_service(self.grpc, MODELS, ModelsServicer(core.repository), authenticator)
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
        # The OpenAI-compatible HTTP gateway, over the same core and auth.
        self.http = HttpGateway(core, authenticator, s.max_receive_message_bytes) \
            if s.http_listen else None
        self.http_bound = ""
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
        if self.http is not None:
            self.http_bound = await self.http.start(self.config.server.http_listen)
        for service in ("", INFERENCE.full_name, MODELS.full_name, KSERVE.full_name):
            await self.health.servicer.set(service, NOT_SERVING)  # until models load
        log.info("listening on %s", ", ".join(self.bound))

    async def mark_serving(self) -> None:
        self.serving = True
        await self.health.serving()

    async def drain(self, grace: float) -> None:
        log.info("draining: no new requests; running streams have %.0fs to finish", grace)
        self.core.draining = True
        self.serving = False
        await self.health.shutting_down()
        await self.models.shutdown(grace)
        for front in self._fronts:
            await front.close()
        await self.grpc.stop(grace=1.0)
        if self.http is not None:
            await self.http.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
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
    cache = ResponseCache(config.server.response_cache_mb << 20,
                          config.server.response_cache_shared)
    core = InferenceService(models, events, config.server.max_tokens_default, cache)
    tokens = TokenStore(store) if store is not None else None
    authenticator = Authenticator(config.auth, config.acl, tokens)
    return HearthServer(config, models, core, events, authenticator)
