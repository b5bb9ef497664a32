"""Python clients of a Hearth daemon (the CLI, tests and benchmarks use them).

    with HearthClient("127.0.0.1:50051") as c:
        for chunk in c.generate("The capital of France is", max_tokens=16):
            print(chunk.text, end="", flush=True)

AsyncHearthClient has the same methods as coroutines / async iterators.
Both raise grpc.RpcError with the server's status code and message.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

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


def _target(addr: str) -> str:
    """Ready files and `hearth serve` print TLS listeners as tls:HOST:PORT."""
    return addr[len("tls:"):] if addr.startswith("tls:") else addr


def _channel(addr: str, creds: Credentials, aio: bool) -> Any:
    tls = creds.channel_credentials()
    module = grpc.aio if aio else grpc
    if tls is None:
        return module.insecure_channel(_target(addr), options=_OPTIONS)
    return module.secure_channel(_target(addr), tls, options=_OPTIONS)


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
