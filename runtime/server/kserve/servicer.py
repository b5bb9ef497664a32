"""inference.GRPCInferenceService: KServe v2 over the transport-neutral core.

Thin, like the hearth.v1 servicers: read the request (requests.py), call the
core or its model repository, build the reply (converters.py, responses.py).
Authentication and the mapping of errors to status codes happen in
registry.py for every method.  The one place errors are answered here is
ModelStreamInfer: a failed request on the stream gets a response with
error_message ("CODE: message", the status the same error gets elsewhere)
and the stream goes on serving the other requests.

Requests on one stream run concurrently (up to MAX_IN_FLIGHT_PER_STREAM,
then the stream stops reading until one finishes); the responses of one
request keep their order, those of different requests interleave and are
told apart by the request id.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc

from runtime import __version__, errors
from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.auth import principal
from runtime.core import CallContext, GenerateChunk, GenerateRequest, InferenceService
from runtime.events import EventBus
from runtime.models.manager import ModelHandle, ModelState
from runtime.request_meta import sane_request_id
from runtime.server import status
from runtime.server.kserve import converters
from runtime.server.kserve.requests import InferCall, check_model_name, check_version, infer_call
from runtime.server.kserve.responses import streamed_responses, whole_response
from runtime.server.kserve.statistics import RequestStatistics
from runtime.server.registry import reject_malformed
from runtime.server.servicers import call_context

log = logging.getLogger("hearth.server")

SERVER_NAME = "hearth"
# Only what is implemented: no shared memory, sequences, tracing or logging.
EXTENSIONS = ("model_configuration", "model_repository", "parameters", "statistics")
MAX_IN_FLIGHT_PER_STREAM = 64
_LOAD_KEYS = ("n_ctx", "n_parallel")
_UNLOAD_KEYS = ("drain_timeout_seconds", "unload_dependents")
_END = object()


def _repository(name: str) -> None:
    if name:
        raise errors.NotFound(f"repository_name: unknown repository {name!r} (Hearth has one, "
                              "named \"\")")


def _repository_parameters(given: Any, known: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key, param in given.items():
        if key not in known:
            raise errors.InvalidArgument(f"parameters.{key}: not supported here (known: "
                                         f"{', '.join(known)})")
        kind = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, kind) if kind else None
    return out


def _int_parameter(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise errors.InvalidArgument(f"parameters.{key}: must be an int64_param")
    return value


class KServeServicer:
    def __init__(self, core: InferenceService, events: EventBus,
                 server_ready: Callable[[], bool]) -> None:
        self.core = core
        self.repository = core.repository
        self.server_ready = server_ready
        self.statistics = RequestStatistics(events)

    def _handle(self, name: str, version: str) -> ModelHandle:
        """A loaded model in any state (the repository's access rules)."""
        check_model_name("name", name)
        check_version("version", name, version)
        return self.repository.get(name, principal.current.get())

    # ---- health and metadata --------------------------------------------

    async def ServerLive(self, request: kpb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: kpb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=self.server_ready())

    async def ModelReady(self, request: kpb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> kpb.ModelReadyResponse:
        try:
            handle = self._handle(request.name, request.version)
        except errors.NotFound:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=handle.state is ModelState.READY)

    async def ServerMetadata(self, request: kpb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name=SERVER_NAME, version=__version__,
                                          extensions=EXTENSIONS)

    async def ModelMetadata(self, request: kpb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> kpb.ModelMetadataResponse:
        return converters.model_metadata(self._handle(request.name, request.version))

    async def ModelConfig(self, request: kpb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext) -> kpb.ModelConfigResponse:
        return converters.model_config(self._handle(request.name, request.version))

    async def ModelStatistics(self, request: kpb.ModelStatisticsRequest,
                              context: grpc.aio.ServicerContext
                              ) -> kpb.ModelStatisticsResponse:
        if request.name:
            handles = [self._handle(request.name, request.version)]
        else:
            handles = sorted(self.repository.index(principal.current.get()).loaded,
                             key=lambda h: h.name)
        return kpb.ModelStatisticsResponse(model_stats=[
            converters.model_statistics(h, self.statistics.of(h.name)) for h in handles])

    # ---- model repository -------------------------------------------------

    async def RepositoryIndex(self, request: kpb.RepositoryIndexRequest,
                              context: grpc.aio.ServicerContext
                              ) -> kpb.RepositoryIndexResponse:
        _repository(request.repository_name)
        index = self.repository.index(principal.current.get())
        return converters.repository_index(index.loaded, index.available, request.ready)

    async def RepositoryModelLoad(self, request: kpb.RepositoryModelLoadRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> kpb.RepositoryModelLoadResponse:
        """Loading a model that is already ready, without parameters, is a
        no-op (Triton clients load at start-up); with parameters it is
        ALREADY_EXISTS: unload it first."""
        _repository(request.repository_name)
        check_model_name("model_name", request.model_name)
        params = _repository_parameters(request.parameters, _LOAD_KEYS)
        await self.repository.load(
            request.model_name, principal.current.get(), n_ctx=_int_parameter(params, "n_ctx"),
            n_parallel=_int_parameter(params, "n_parallel"), keep_ready=not params)
        return kpb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: kpb.RepositoryModelUnloadRequest,
                                    context: grpc.aio.ServicerContext
                                    ) -> kpb.RepositoryModelUnloadResponse:
        """Drains running requests first (drain_timeout_seconds, default the
        server's grace period).  unload_dependents is accepted: Hearth models
        have no dependents."""
        _repository(request.repository_name)
        check_model_name("model_name", request.model_name)
        params = _repository_parameters(request.parameters, _UNLOAD_KEYS)
        await self.repository.unload(request.model_name, principal.current.get(),
                                     _int_parameter(params, "drain_timeout_seconds"))
        return kpb.RepositoryModelUnloadResponse()

    # ---- inference ----------------------------------------------------------

    def _request_context(self, call: InferCall, base: CallContext, fallback_id: str
                         ) -> CallContext:
        """The stream's (or call's) context with this request's id and its
        `timeout` parameter, which can only bring the deadline closer."""
        deadline = base.deadline
        if call.timeout_s is not None:
            own = time.monotonic() + call.timeout_s
            deadline = own if deadline is None else min(deadline, own)
        # The client's id names the request in logs and the audit when it is plain enough.
        request_id = call.id if sane_request_id(call.id) else fallback_id
        return replace(base, request_id=request_id, deadline=deadline)

    def _generate(self, call: InferCall, ctx: CallContext) -> AsyncIterator[GenerateChunk]:
        return self.core.generate(
            GenerateRequest(model=call.model, prompt=call.prompt, options=call.options), ctx)

    async def ModelInfer(self, request: kpb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> kpb.ModelInferResponse:
        call = infer_call(request)
        if call.stream:
            raise errors.InvalidArgument("stream: true needs ModelStreamInfer (ModelInfer "
                                         "answers with one response)")
        base = call_context(context)
        ctx = self._request_context(call, base, base.request_id)
        return await whole_response(call, self._generate(call, ctx), flag_final=False)

    async def _serve_one(self, request: Any, base: CallContext,
                         outbox: asyncio.Queue) -> None:
        """All responses to one request on the stream, or its error."""
        try:
            reject_malformed(request)
            call = infer_call(request)
            ctx = self._request_context(call, base, uuid.uuid4().hex[:16])
            if call.stream:
                async for response in streamed_responses(call, self._generate(call, ctx)):
                    outbox.put_nowait(kpb.ModelStreamInferResponse(infer_response=response))
            else:
                response = await whole_response(call, self._generate(call, ctx),
                                                flag_final=True)
                outbox.put_nowait(kpb.ModelStreamInferResponse(infer_response=response))
        except Exception as exc:
            outbox.put_nowait(self._error_response(exc, request))

    def _error_response(self, exc: Exception, request: Any) -> kpb.ModelStreamInferResponse:
        if not isinstance(exc, errors.HearthError):
            log.exception("unexpected error in ModelStreamInfer", exc_info=exc)
        code, message, _ = status.abort_args(exc)
        out = kpb.ModelStreamInferResponse(error_message=f"{code.name}: {message}")
        if isinstance(request, kpb.ModelInferRequest):
            out.infer_response.id = request.id
            out.infer_response.model_name = request.model_name
        return out

    async def ModelStreamInfer(self, requests: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        base = call_context(context)
        # Unbounded: what waits in it is bounded by the requests in flight.
        outbox: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_IN_FLIGHT_PER_STREAM)
        running: set[asyncio.Task] = set()

        def finished(task: asyncio.Task) -> None:
            running.discard(task)
            slots.release()

        async def read() -> None:
            """Starts a task per request; ends once the client has stopped
            sending and every request is answered."""
            try:
                async for request in requests:
                    await slots.acquire()
                    task = asyncio.create_task(self._serve_one(request, base, outbox))
                    running.add(task)
                    task.add_done_callback(finished)
                while running:
                    await asyncio.wait(set(running))
            finally:
                outbox.put_nowait(_END)

        reader = asyncio.create_task(read())
        try:
            while (item := await outbox.get()) is not _END:
                yield item
            await reader        # a failure reading the stream ends the call with its status
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()   # closes its core stream, which frees the engine slot
