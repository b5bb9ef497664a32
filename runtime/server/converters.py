"""Protobuf messages <-> core types, in both directions.  No logic here
beyond copying fields; validation belongs to the core."""
from __future__ import annotations

from typing import Any

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime.core import (
    ChatMessage,
    ChatRequest,
    EmbedRequest,
    GenerateChunk,
    GenerateRequest,
    GenerationOptions,
    StructuredOutput,
)
from runtime.core.explain import ExplainRequest, ExplainResult
from runtime.core.options import OPTIONS, Kind
from runtime.core.types import EmbedResult
from runtime.core.validation import check_printable
from runtime.errors import InvalidArgument
from runtime.models.manager import ModelHandle

# hearth.v1 spells each option as its name (core/options.py).  Options whose
# "not set" is None are `optional` fields there: unset means the server
# default, which only presence can tell from a zero.
_OPTIONAL = tuple(o.name for o in OPTIONS if o.empty is None and o.kind is not Kind.STRUCTURED)
_PLAIN = tuple(o.name for o in OPTIONS if o.empty is not None and o.kind is not Kind.TEXT_LIST)
_LISTS = tuple(o.name for o in OPTIONS if o.kind is Kind.TEXT_LIST)
# Model names are echoed into replies and logs (SECURITY-CASES 33).
MAX_MODEL_NAME = 256

FINISH_REASONS = {
    "stop": ipb.FINISH_REASON_STOP, "length": ipb.FINISH_REASON_LENGTH,
    "cancelled": ipb.FINISH_REASON_CANCELLED, "deadline": ipb.FINISH_REASON_DEADLINE,
    "error": ipb.FINISH_REASON_ERROR,
}
MODEL_STATES = {
    "loading": mpb.MODEL_STATE_LOADING, "ready": mpb.MODEL_STATE_READY,
    "draining": mpb.MODEL_STATE_DRAINING, "failed": mpb.MODEL_STATE_FAILED,
    "unloaded": mpb.MODEL_STATE_UNLOADED,
}


def structured_from(msg: Any) -> StructuredOutput | None:
    fmt = msg.response_format.type
    if msg.grammar and fmt != ipb.ResponseFormat.TYPE_TEXT:
        raise InvalidArgument("grammar: set either grammar or response_format, not both")
    if msg.response_format.json_schema and fmt != ipb.ResponseFormat.TYPE_JSON_SCHEMA:
        raise InvalidArgument("response_format.json_schema: needs type TYPE_JSON_SCHEMA")
    if msg.grammar:
        return StructuredOutput("grammar", msg.grammar)
    if fmt == ipb.ResponseFormat.TYPE_JSON_OBJECT:
        return StructuredOutput("json_object")
    if fmt == ipb.ResponseFormat.TYPE_JSON_SCHEMA:
        if not msg.response_format.json_schema:
            raise InvalidArgument("response_format.json_schema: must not be empty")
        return StructuredOutput("json_schema", msg.response_format.json_schema)
    if fmt != ipb.ResponseFormat.TYPE_TEXT:
        raise InvalidArgument(f"response_format.type: unknown value {fmt}")
    return None


def options_from(msg: Any) -> GenerationOptions:
    """GenerateRequest and ChatRequest share these fields and numbers."""
    values: dict[str, Any] = {
        name: getattr(msg, name) if msg.HasField(name) else None for name in _OPTIONAL}
    values.update((name, getattr(msg, name)) for name in _PLAIN)
    values.update((name, tuple(getattr(msg, name))) for name in _LISTS)
    return GenerationOptions(structured=structured_from(msg), **values)


def model_name(msg: Any) -> str:
    return check_printable("model", msg.model, MAX_MODEL_NAME)


def generate_request(msg: ipb.GenerateRequest) -> GenerateRequest:
    return GenerateRequest(model=model_name(msg), prompt=msg.prompt,
                           prompt_tokens=tuple(msg.prompt_tokens), options=options_from(msg))


def chat_request(msg: ipb.ChatRequest) -> ChatRequest:
    return ChatRequest(model=model_name(msg),
                       messages=tuple(ChatMessage(m.role, m.content) for m in msg.messages),
                       options=options_from(msg))


def embed_request(msg: ipb.EmbedRequest) -> EmbedRequest:
    return EmbedRequest(model=model_name(msg), inputs=tuple(msg.input),
                        normalize=msg.normalize)


def generate_response(chunk: GenerateChunk) -> ipb.GenerateResponse:
    out = ipb.GenerateResponse(text=chunk.text, token_ids=chunk.token_ids,
                               request_id=chunk.request_id, cached=chunk.cached)
    for lp in chunk.logprobs:
        out.logprobs.append(ipb.TokenLogprob(
            token_id=lp.token_id, token=lp.token, logprob=lp.logprob,
            top_logprobs=[ipb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob)
                          for t in lp.top]))
    if chunk.finish_reason:
        out.finish_reason = FINISH_REASONS[chunk.finish_reason]
        out.stop_sequence = chunk.stop_sequence
        out.model = chunk.model
    if chunk.usage is not None:
        u = chunk.usage
        out.usage.CopyFrom(ipb.Usage(
            prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
            cached_tokens=u.cached_tokens, ttft_seconds=u.ttft_s, total_seconds=u.total_s,
            queue_seconds=u.queue_s, energy_joules=u.energy_joules,
            energy_source=u.energy_source))
    return out


def embed_response(result: EmbedResult) -> ipb.EmbedResponse:
    return ipb.EmbedResponse(
        model=result.model,
        embeddings=[ipb.Embedding(values=e.values, prompt_tokens=e.prompt_tokens)
                    for e in result.embeddings])


def drift_summary(d: dict[str, Any]) -> mpb.DriftSummary:
    """A drift monitor's summary (runtime/drift/service.py: summary())."""
    threshold = d["threshold"]
    return mpb.DriftSummary(
        version=d["version"], phase=d["phase"], reference_size=d["reference_size"],
        window=d["window"], observed=d["observed"],
        threshold=float("nan") if threshold is None else threshold, alarm=d["alarm"],
        signals=[mpb.DriftSignalStatus(signal=name, statistic=s["statistic"],
                                       p_value=s["p_value"])
                 for name, s in sorted(d["signals"].items())])


def model_status(handle: ModelHandle) -> mpb.ModelStatus:
    out = mpb.ModelStatus(name=handle.name, state=MODEL_STATES[handle.state.value],
                          error=handle.error, load_seconds=handle.load_seconds,
                          source=handle.source or handle.config.path,
                          chat_template=handle.chat_template_source,
                          adapters=sorted(handle.adapters),
                          adapter_versions=handle.adapter_versions)
    engine = handle.engine
    stats = engine.stats_if_open() if engine is not None else None
    if engine is None or stats is None:
        return out
    info = engine.info
    out.architecture = info.arch
    out.description = info.description
    out.n_params = info.n_params
    out.weights_bytes = info.size_bytes
    out.kv_cache_bytes = info.kv_bytes
    out.n_ctx = info.n_ctx
    out.n_ctx_per_request = info.n_ctx_slot
    out.n_gpu_layers = info.n_gpu_layers
    out.slots_total = stats.n_slots
    out.slots_busy = stats.slots_busy
    out.queue_depth = stats.queue_depth
    out.max_queue = stats.max_queue
    out.kv_cells_used = stats.kv_cells_used
    out.kv_cells_total = stats.kv_cells_total
    out.requests_finished = stats.requests_finished
    out.tokens_prompt = stats.tokens_prompt
    out.tokens_cached = stats.tokens_cached
    out.tokens_generated = stats.tokens_generated
    return out


def explain_request(msg: ipb.ExplainRequest) -> ExplainRequest:
    return ExplainRequest(model=model_name(msg), prompt=msg.prompt, unit=msg.unit,
                          target=msg.target if msg.HasField("target") else None,
                          max_tokens=msg.max_tokens if msg.HasField("max_tokens") else None,
                          adapter=msg.adapter)


def explain_response(result: ExplainResult) -> ipb.ExplainResponse:
    return ipb.ExplainResponse(
        answer=result.answer, answer_logprob=result.answer_logprob,
        segments=[ipb.ExplainSegment(text=s.text, score=s.score, start=s.start, end=s.end)
                  for s in result.segments],
        prefill_tokens=result.prefill_tokens, prefills=result.prefills,
        seconds=result.seconds, model=result.model)
