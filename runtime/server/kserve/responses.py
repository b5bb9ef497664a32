"""How the core's chunks for one request become KServe responses.

Not streaming (stream=false): one response with the whole text (after the
prompt, if the request wants it included) and the finish parameters.

Streaming (stream=true, decoupled, on ModelStreamInfer only): one response
per chunk that brings text, each flagged `triton_final_response` = false,
then the end:
  * the client asked for an empty final response (tritonclient's
    enable_empty_final_response=True): the last text, if any, then a
    response without outputs, flagged final, carrying the finish parameters;
  * otherwise the last chunk's response (its text, possibly "") is the one
    flagged final and carries the finish parameters.
So a client always sees exactly one response flagged final per request.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.core import GenerateChunk
from runtime.core.types import TokenLogprob
from runtime.errors import InternalError
from runtime.server.kserve.converters import (
    FINAL_KEY,
    empty_response,
    finish_parameters,
    logprobs_parameter,
    text_response,
)
from runtime.server.kserve.requests import InferCall


async def whole_response(call: InferCall, chunks: AsyncIterator[GenerateChunk],
                         flag_final: bool) -> kpb.ModelInferResponse:
    """flag_final: mark it triton_final_response (on the streaming RPC)."""
    texts = [call.prompt] if call.include_prompt else []
    logprobs: list[TokenLogprob] = []
    last: GenerateChunk | None = None
    async for chunk in chunks:
        texts.append(chunk.text)
        logprobs.extend(chunk.logprobs)
        last = chunk
    if last is None or not last.finish_reason:
        raise InternalError("generation ended without a final chunk")
    parameters = {**finish_parameters(last), **logprobs_parameter(logprobs)}
    if flag_final:
        parameters[FINAL_KEY] = True
    return text_response(call, "".join(texts), parameters)


async def streamed_responses(call: InferCall, chunks: AsyncIterator[GenerateChunk]
                             ) -> AsyncIterator[kpb.ModelInferResponse]:
    finished = False
    # Read to the end, not just to the final chunk: the core counts a stream
    # left early as abandoned.
    async for chunk in chunks:
        brings_something = bool(chunk.text or chunk.logprobs)
        partial = {**logprobs_parameter(chunk.logprobs), FINAL_KEY: False}
        if not chunk.finish_reason:
            if brings_something:        # a chunk held back inside a character has no text
                yield text_response(call, chunk.text, partial)
            continue
        done = {**finish_parameters(chunk), FINAL_KEY: True}
        if call.empty_final_response:
            if brings_something:
                yield text_response(call, chunk.text, partial)
            yield empty_response(call, done)
        else:
            yield text_response(call, chunk.text, {**logprobs_parameter(chunk.logprobs), **done})
        finished = True
    if not finished:
        raise InternalError("generation ended without a final chunk")
