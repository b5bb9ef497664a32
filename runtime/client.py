"""Python clients of a Hearth daemon (the CLI, tests and benchmarks use them).

    with HearthClient("127.0.0.1:50051") as c:
        for chunk in c.generate("The capital of France is", max_tokens=16):
            print(chunk.text, end="", flush=True)

AsyncHearthClient has the same methods as coroutines / async iterators.
Both raise grpc.RpcError with the server's status code and message.

Replicas: an address may name several daemons, "h1:50051,h2:50051" or
"dns:///hearth.site.internal".  The channel then spreads calls round-robin
over the replicas that answer SERVING to grpc.health.v1 for
hearth.v1.Inference (a draining or stopped one leaves the rotation) and
retries a call refused with UNAVAILABLE before any response header on
another replica; SERVICE_CONFIG is the whole policy, and docs/scale-out.md
gives it to other clients.  A single address keeps a plain channel.
"""
from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from runtime import errors
from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import inference_pb2_grpc as igrpc
from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime._proto.hearth.v1 import models_pb2_grpc as mgrpc

MAX_MESSAGE = 64 << 20
_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE)]


def _generate_request(prompt: str | Sequence[int], model: str, **options: Any
                      ) -> ipb.GenerateRequest:
    stop = options.pop("stop", ())
    fields = {k: v for k, v in options.items() if v is not None}
    if isinstance(prompt, str):
        return ipb.GenerateRequest(model=model, prompt=prompt, stop=list(stop), **fields)
    return ipb.GenerateRequest(model=model, prompt_tokens=list(prompt), stop=list(stop), **fields)


def _chat_request(messages: Sequence[tuple[str, str]], model: str, **options: Any
                  ) -> ipb.ChatRequest:
    stop = options.pop("stop", ())
    fields = {k: v for k, v in options.items() if v is not None}
    return ipb.ChatRequest(model=model, stop=list(stop),
                           messages=[ipb.ChatMessage(role=r, content=c) for r, c in messages],
                           **fields)


@dataclass(frozen=True)
class Credentials:
    """How to reach a protected daemon: a bearer token, and/or TLS (the CA
    that signed the server's certificate, plus a client certificate for mTLS)."""

    token: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca_file:
            return None
        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file),
                                            read(self.cert_file))


HEALTH_SERVICE = "hearth.v1.Inference"

# The channel policy for several replicas (docs/scale-out.md shows it to other
# clients).  gRPC commits a call, and never retries it, once response headers
# or a message have arrived; Hearth's streaming methods refuse a call (draining,
# model not ready) before sending headers, so exactly those refusals are retried,
# and a stream that has produced tokens is never replayed.  gRPC caps
# maxAttempts at 5.
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
    "methodConfig": [{
        "name": [{"service": "hearth.v1.Inference"},
                 {"service": "inference.GRPCInferenceService"}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}


@dataclass(frozen=True)
class Target:
    """What a channel is opened on: the gRPC target string, whether it names
    replicas (then SERVICE_CONFIG applies), and the authority TLS checks the
    certificates against."""

    target: str
    replicated: bool = False
    authority: str = ""


def _strip_tls(addr: str) -> str:
    """Ready files and `hearth serve` print TLS listeners as tls:HOST:PORT."""
    return addr[len("tls:"):] if addr.startswith("tls:") else addr


def _split_host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument(f"replica address {item!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 socket addresses of one replica, in gRPC's spelling."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise errors.InvalidArgument(
                f"replica address {host}:{port}: cannot resolve: {exc}") from exc
        ips = [ipaddress.ip_address(info[4][0]) for info in infos]
    else:
        ips = [ip]
    v4 = [f"{ip}:{port}" for ip in dict.fromkeys(ips) if ip.version == 4]
    v6 = [f"[{ip}]:{port}" for ip in dict.fromkeys(ips) if ip.version == 6]
    return v4, v6


def parse_target(addr: str) -> Target:
    """One address, a comma-separated list of replicas (HOST:PORT each, or
    unix:PATH each), or a dns:/// name whose records are the replicas.

    A list of host names is resolved once, here (gRPC's static-list targets
    take IP literals); use dns:/// to follow DNS changes.  Under TLS the
    authority is the first entry's host, so every replica's certificate must
    carry that name (a shared service name in its SAN)."""
    addr = addr.strip()
    if addr.startswith("dns:"):
        return Target(addr, replicated=True)
    items = [_strip_tls(a.strip()) for a in addr.split(",")]
    if len(items) == 1:
        return Target(items[0])
    if any(not a for a in items):
        raise errors.InvalidArgument(f"replica list {addr!r}: an empty entry")
    if all(a.startswith("unix:") for a in items):
        return Target("unix:" + ",".join(a[len("unix:"):] for a in items), replicated=True,
                      authority="localhost")
    if any(a.startswith("unix:") for a in items):
        raise errors.InvalidArgument(
            f"replica list {addr!r}: mixes unix sockets and TCP addresses")
    resolved = [_resolve(*_split_host_port(a)) for a in items]
    authority = items[0]
    if all(v4 for v4, _ in resolved):
        return Target("ipv4:" + ",".join(a for v4, _ in resolved for a in v4), True, authority)
    if all(v6 for _, v6 in resolved):
        return Target("ipv6:" + ",".join(a for _, v6 in resolved for a in v6), True, authority)
    raise errors.InvalidArgument(
        f"replica list {addr!r}: gRPC cannot mix IPv4-only and IPv6-only replicas in one "
        f"list; give addresses of one family or use dns:///")


def _channel(addr: str, creds: Credentials, aio: bool) -> Any:
    target = parse_target(addr)
    options: list[tuple[str, Any]] = list(_OPTIONS)
    if target.replicated:
        options += [("grpc.service_config", json.dumps(SERVICE_CONFIG)),
                    # our policy, not one a DNS TXT record might carry
                    ("grpc.service_config_disable_resolution", 1)]
    if target.authority:
        options.append(("grpc.default_authority", target.authority))
    tls = creds.channel_credentials()
    module = grpc.aio if aio else grpc
    if tls is None:
        return module.insecure_channel(target.target, options=options)
    return module.secure_channel(target.target, tls, options=options)


class _WithMetadata:
    """A stub whose every call carries the credentials' metadata."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not self._metadata:
            return method

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs["metadata"] = tuple(kwargs.get("metadata") or ()) + self._metadata
            return method(request, **kwargs)
        return call


class HearthClient:
    def __init__(self, addr: str, timeout: float | None = None,
                 credentials: Credentials | None = None) -> None:
        creds = credentials or Credentials()
        self.channel = _channel(addr, creds, aio=False)
        self.inference = _WithMetadata(igrpc.InferenceStub(self.channel), creds.metadata())
        self.models = _WithMetadata(mgrpc.ModelsStub(self.channel), creds.metadata())
        self.timeout = timeout

    def __enter__(self) -> HearthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate(self, prompt: str | Sequence[int], model: str = "", **options: Any
                 ) -> Iterator[ipb.GenerateResponse]:
        return self.inference.Generate(_generate_request(prompt, model, **options),
                                       timeout=self.timeout)

    def chat(self, messages: Sequence[tuple[str, str]], model: str = "", **options: Any
             ) -> Iterator[ipb.GenerateResponse]:
        return self.inference.Chat(_chat_request(messages, model, **options),
                                   timeout=self.timeout)

    def complete(self, prompt: str | Sequence[int], model: str = "", **options: Any
                 ) -> tuple[str, list[int], ipb.GenerateResponse]:
        """Runs a generation to the end: (text, token ids, last chunk)."""
        text, tokens, last = [], [], None
        for chunk in self.generate(prompt, model, **options):
            text.append(chunk.text)
            tokens.extend(chunk.token_ids)
            last = chunk
        assert last is not None
        return "".join(text), tokens, last

    def embed(self, inputs: Sequence[str], model: str = "", normalize: bool = True
              ) -> ipb.EmbedResponse:
        return self.inference.Embed(ipb.EmbedRequest(model=model, input=list(inputs),
                                                     normalize=normalize), timeout=self.timeout)

    def tokenize(self, text: str, model: str = "", add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        reply = self.inference.Tokenize(ipb.TokenizeRequest(
            model=model, text=text, add_special=add_special, parse_special=parse_special),
            timeout=self.timeout)
        return list(reply.tokens)

    def detokenize(self, tokens: Sequence[int], model: str = "", render_special: bool = False
                   ) -> str:
        return self.inference.Detokenize(ipb.DetokenizeRequest(
            model=model, tokens=list(tokens), render_special=render_special),
            timeout=self.timeout).text

    def explain(self, prompt: str, model: str = "", unit: str = "", target: str | None = None,
                max_tokens: int | None = None, adapter: str = "") -> ipb.ExplainResponse:
        """Occlusion scores of the prompt's segments for the answer
        (docs/explain.md)."""
        return self.inference.Explain(ipb.ExplainRequest(
            model=model, prompt=prompt, unit=unit, target=target, max_tokens=max_tokens,
            adapter=adapter), timeout=self.timeout)

    def list_models(self) -> mpb.ListModelsResponse:
        return self.models.List(mpb.ListModelsRequest(), timeout=self.timeout)

    def get_model(self, name: str = "") -> mpb.ModelStatus:
        return self.models.Get(mpb.GetModelRequest(name=name), timeout=self.timeout)

    def load_model(self, name: str, n_ctx: int | None = None, n_parallel: int | None = None
                   ) -> mpb.ModelStatus:
        req = mpb.LoadModelRequest(name=name)
        if n_ctx is not None:
            req.n_ctx = n_ctx
        if n_parallel is not None:
            req.n_parallel = n_parallel
        return self.models.Load(req, timeout=self.timeout)

    def unload_model(self, name: str, drain_timeout: float | None = None) -> mpb.ModelStatus:
        req = mpb.UnloadModelRequest(name=name)
        if drain_timeout is not None:
            req.drain_timeout_seconds = drain_timeout
        return self.models.Unload(req, timeout=self.timeout)

    def set_adapter(self, model: str, adapter: str, stored_name: str) -> mpb.ModelStatus:
        return self.models.SetAdapter(mpb.SetAdapterRequest(
            model=model, adapter=adapter, stored_name=stored_name), timeout=self.timeout)

    def remove_adapter(self, model: str, adapter: str) -> mpb.ModelStatus:
        return self.models.RemoveAdapter(mpb.RemoveAdapterRequest(model=model, adapter=adapter),
                                         timeout=self.timeout)


class AsyncHearthClient:
    def __init__(self, addr: str, credentials: Credentials | None = None) -> None:
        creds = credentials or Credentials()
        self.channel = _channel(addr, creds, aio=True)
        self.inference = _WithMetadata(igrpc.InferenceStub(self.channel), creds.metadata())
        self.models = _WithMetadata(mgrpc.ModelsStub(self.channel), creds.metadata())

    async def __aenter__(self) -> AsyncHearthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    def generate(self, prompt: str | Sequence[int], model: str = "",
                 timeout: float | None = None, **options: Any
                 ) -> AsyncIterator[ipb.GenerateResponse]:
        return self.inference.Generate(_generate_request(prompt, model, **options),
                                       timeout=timeout)

    def chat(self, messages: Sequence[tuple[str, str]], model: str = "",
             timeout: float | None = None, **options: Any) -> AsyncIterator[ipb.GenerateResponse]:
        return self.inference.Chat(_chat_request(messages, model, **options), timeout=timeout)

    async def complete(self, prompt: str | Sequence[int], model: str = "", **options: Any
                       ) -> tuple[str, list[int], ipb.GenerateResponse]:
        text, tokens, last = [], [], None
        async for chunk in self.generate(prompt, model, **options):
            text.append(chunk.text)
            tokens.extend(chunk.token_ids)
            last = chunk
        assert last is not None
        return "".join(text), tokens, last

    async def get_model(self, name: str = "") -> mpb.ModelStatus:
        return await self.models.Get(mpb.GetModelRequest(name=name))
