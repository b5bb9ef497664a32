"""hearth.v1.Inference and hearth.v1.Models.

Each method converts, calls the core, converts back.  Errors are mapped in
registry.py, not here.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from runtime import errors
from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime.auth import principal
from runtime.core import CallContext, GenerateChunk, InferenceService, ModelRepository
from runtime.core.explain import Explainer
from runtime.names import check_name
from runtime.request_meta import REQUEST_ID_KEY, SUBJECT_KEY, sane_request_id, sane_subject
from runtime.server import converters

if TYPE_CHECKING:   # the drift watch (and numpy) load only when [drift] is on
    from runtime.drift.service import DriftService


def call_context(context: grpc.aio.ServicerContext) -> CallContext:
    """Request id from the caller's x-request-id (if sane), else a new one."""
    request_id = subject = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and sane_request_id(value):
            request_id = value
        elif key == SUBJECT_KEY and sane_subject(value):
            subject = value
    remaining = context.time_remaining()
    caller = principal.current.get()
    return CallContext(
        request_id=request_id or uuid.uuid4().hex[:16],
        client=caller.identity if not caller.anonymous
        else context.peer() or "unknown",
        deadline=time.monotonic() + remaining if remaining is not None else None,
        subject=subject,
        principal=caller,
    )


class InferenceServicer:
    def __init__(self, core: InferenceService, explainer: Explainer | None = None) -> None:
        self.core = core
        self.explainer = explainer or Explainer(core)

    async def _stream(self, chunks: AsyncIterator[GenerateChunk], ctx: CallContext,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[ipb.GenerateResponse]:
        """Response headers go out with the first chunk, not before: until
        then a refusal (draining, model not ready) is a trailers-only response,
        which gRPC may retry on another replica; after headers it may not
        (docs/scale-out.md)."""
        first = True
        async for chunk in chunks:
            if first:
                await context.send_initial_metadata(((REQUEST_ID_KEY, ctx.request_id),))
                first = False
            yield converters.generate_response(chunk)

    async def Generate(self, request: ipb.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[ipb.GenerateResponse]:
        ctx = call_context(context)
        chunks = self.core.generate(converters.generate_request(request), ctx)
        async for response in self._stream(chunks, ctx, context):
            yield response

    async def Chat(self, request: ipb.ChatRequest, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[ipb.GenerateResponse]:
        ctx = call_context(context)
        async for response in self._stream(self.core.chat(converters.chat_request(request), ctx),
                                           ctx, context):
            yield response

    async def Embed(self, request: ipb.EmbedRequest, context: grpc.aio.ServicerContext
                    ) -> ipb.EmbedResponse:
        result = await self.core.embed(converters.embed_request(request), call_context(context))
        return converters.embed_response(result)

    async def Tokenize(self, request: ipb.TokenizeRequest, context: grpc.aio.ServicerContext
                       ) -> ipb.TokenizeResponse:
        tokens = await self.core.tokenize(request.model, request.text, request.add_special,
                                          request.parse_special, call_context(context))
        return ipb.TokenizeResponse(tokens=tokens)

    async def Detokenize(self, request: ipb.DetokenizeRequest,
                         context: grpc.aio.ServicerContext) -> ipb.DetokenizeResponse:
        text = await self.core.detokenize(request.model, list(request.tokens),
                                          request.render_special, call_context(context))
        return ipb.DetokenizeResponse(text=text)

    async def Explain(self, request: ipb.ExplainRequest, context: grpc.aio.ServicerContext
                      ) -> ipb.ExplainResponse:
        result = await self.explainer.explain(converters.explain_request(request),
                                              call_context(context))
        return converters.explain_response(result)


class ModelsServicer:
    """hearth.v1.Models over the core's ModelRepository (and the drift
    watch's summaries, when the daemon has one)."""

    def __init__(self, repository: ModelRepository, drift: DriftService | None = None) -> None:
        self.repository = repository
        self.drift = drift

    def _with_drift(self, status: mpb.ModelStatus) -> mpb.ModelStatus:
        if self.drift is not None:
            status.drift.extend(converters.drift_summary(d)
                                for d in self.drift.status(status.name))
        return status

    async def List(self, request: mpb.ListModelsRequest, context: grpc.aio.ServicerContext
                   ) -> mpb.ListModelsResponse:
        index = self.repository.index(principal.current.get())
        return mpb.ListModelsResponse(models=[converters.model_status(h) for h in index.loaded],
                                      available=index.available)

    async def Get(self, request: mpb.GetModelRequest, context: grpc.aio.ServicerContext
                  ) -> mpb.ModelStatus:
        return self._with_drift(converters.model_status(
            self.repository.get(request.name, principal.current.get())))

    async def ResetDrift(self, request: mpb.ResetDriftRequest,
                         context: grpc.aio.ServicerContext) -> mpb.ModelStatus:
        caller = principal.current.get()
        caller.check_admin("reset drift references")
        if self.drift is None:
            raise errors.NotFound("drift: the daemon is not watching drift "
                                  "(enable [drift] or serve with --drift)")
        model, _, adapter = request.model.partition("@")
        check_name(model, "model")
        if adapter:
            check_name(adapter, "model (its adapter)")
        caller.check_model(model)
        await asyncio.get_running_loop().run_in_executor(
            None, self.drift.reset, request.model, caller.identity)
        return self._with_drift(converters.model_status(self.repository.get(model, caller)))

    async def Load(self, request: mpb.LoadModelRequest, context: grpc.aio.ServicerContext
                   ) -> mpb.ModelStatus:
        handle = await self.repository.load(
            request.name, principal.current.get(),
            n_ctx=request.n_ctx if request.HasField("n_ctx") else None,
            n_parallel=request.n_parallel if request.HasField("n_parallel") else None)
        return converters.model_status(handle)

    async def Unload(self, request: mpb.UnloadModelRequest, context: grpc.aio.ServicerContext
                     ) -> mpb.ModelStatus:
        timeout = (request.drain_timeout_seconds if request.HasField("drain_timeout_seconds")
                   else None)
        return converters.model_status(
            await self.repository.unload(request.name, principal.current.get(), timeout))

    async def SetAdapter(self, request: mpb.SetAdapterRequest,
                         context: grpc.aio.ServicerContext) -> mpb.ModelStatus:
        return converters.model_status(await self.repository.set_adapter(
            request.model, request.adapter, request.stored_name, principal.current.get()))

    async def RemoveAdapter(self, request: mpb.RemoveAdapterRequest,
                            context: grpc.aio.ServicerContext) -> mpb.ModelStatus:
        return converters.model_status(await self.repository.remove_adapter(
            request.model, request.adapter, principal.current.get()))
