"""Hearth's results and model state as KServe v2 messages.  Copying only;
requests are read in requests.py, the flow is the servicer's."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.core import GenerateChunk
from runtime.core.types import TokenLogprob
from runtime.models.manager import ModelHandle, ModelState
from runtime.server.kserve.requests import INPUTS, MODEL_VERSION, OUTPUTS, InferCall
from runtime.server.kserve.statistics import ModelCounters
from runtime.server.kserve.tensors import TensorSpec, serialize_bytes

PLATFORM = "hearth"
BACKEND = "llama.cpp"
FINAL_KEY = "triton_final_response"
_CONFIG_TYPES = {"BYTES": kpb.TYPE_STRING, "BOOL": kpb.TYPE_BOOL}
# Triton's repository states.
_INDEX_STATES = {
    ModelState.READY: "READY", ModelState.LOADING: "LOADING",
    ModelState.DRAINING: "UNLOADING", ModelState.FAILED: "UNAVAILABLE",
    ModelState.UNLOADED: "UNAVAILABLE",
}

ParameterValue = bool | int | float | str


def set_parameters(target: kpb.ModelInferResponse, values: Mapping[str, ParameterValue]
                   ) -> None:
    for key, value in values.items():
        param = target.parameters[key]
        if isinstance(value, bool):         # before int: bool is an int
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = value


def text_response(call: InferCall, text: str,
                  parameters: Mapping[str, ParameterValue] | None = None
                  ) -> kpb.ModelInferResponse:
    """One text_output element, in raw form: stock clients read outputs from
    raw_output_contents."""
    out = kpb.ModelInferResponse(model_name=call.model, model_version=MODEL_VERSION,
                                 id=call.id)
    out.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    out.raw_output_contents.append(serialize_bytes([text.encode("utf-8")]))
    set_parameters(out, parameters or {})
    return out


def empty_response(call: InferCall, parameters: Mapping[str, ParameterValue]
                   ) -> kpb.ModelInferResponse:
    """No outputs: the response that only says a streamed request is done."""
    out = kpb.ModelInferResponse(model_name=call.model, model_version=MODEL_VERSION,
                                 id=call.id)
    set_parameters(out, parameters)
    return out


def finish_parameters(last: GenerateChunk) -> dict[str, ParameterValue]:
    """Why generation stopped and what it used, from the last chunk."""
    out: dict[str, ParameterValue] = {"finish_reason": last.finish_reason}
    if last.stop_sequence:
        out["stop_sequence"] = last.stop_sequence
    if last.usage is not None:
        out["prompt_tokens"] = last.usage.prompt_tokens
        out["completion_tokens"] = last.usage.completion_tokens
        out["cached_tokens"] = last.usage.cached_tokens
        if last.usage.energy_source:
            out["energy_joules"] = float(last.usage.energy_joules)
            out["energy_source"] = last.usage.energy_source
    return out


def logprobs_parameter(logprobs: Sequence[TokenLogprob]) -> dict[str, ParameterValue]:
    """The tokens' log-probabilities as a JSON string parameter `logprobs`
    (parameters hold scalars only); nothing when none were asked for."""
    if not logprobs:
        return {}
    return {"logprobs": json.dumps([
        {"token_id": t.token_id, "token": t.token, "logprob": t.logprob,
         "top": [{"token_id": a.token_id, "token": a.token, "logprob": a.logprob}
                 for a in t.top]}
        for t in logprobs])}


def model_metadata(handle: ModelHandle) -> kpb.ModelMetadataResponse:
    def tensors(specs: Iterable[TensorSpec]) -> list[kpb.ModelMetadataResponse.TensorMetadata]:
        return [kpb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]

    return kpb.ModelMetadataResponse(name=handle.name, versions=[MODEL_VERSION],
                                     platform=PLATFORM, inputs=tensors(INPUTS),
                                     outputs=tensors(OUTPUTS))


def model_config(handle: ModelHandle) -> kpb.ModelConfigResponse:
    config = kpb.ModelConfig(
        name=handle.name, platform=PLATFORM, backend=BACKEND, max_batch_size=0,
        input=[kpb.ModelInput(name=s.name, data_type=_CONFIG_TYPES[s.datatype],
                              dims=list(s.shape), optional=s.optional) for s in INPUTS],
        output=[kpb.ModelOutput(name=s.name, data_type=_CONFIG_TYPES[s.datatype],
                                dims=list(s.shape)) for s in OUTPUTS],
        model_transaction_policy=kpb.ModelTransactionPolicy(decoupled=True))
    if handle.engine is not None:
        info = handle.engine.info
        facts = {"architecture": info.arch, "n_ctx": info.n_ctx,
                 "n_ctx_per_request": info.n_ctx_slot, "n_gpu_layers": info.n_gpu_layers}
        for key, value in facts.items():
            config.parameters[key].string_value = str(value)
    return kpb.ModelConfigResponse(config=config)


def repository_index(handles: Sequence[ModelHandle], available: Sequence[str],
                     only_ready: bool) -> kpb.RepositoryIndexResponse:
    """Loaded models with their state, then the loadable ones (UNAVAILABLE)."""
    out = kpb.RepositoryIndexResponse()
    for h in sorted(handles, key=lambda h: h.name):
        state = _INDEX_STATES[h.state]
        if not only_ready or state == "READY":
            out.models.add(name=h.name, version=MODEL_VERSION, state=state, reason=h.error)
    if not only_ready:
        for name in available:
            out.models.add(name=name, state="UNAVAILABLE", reason="not loaded")
    return out


def model_statistics(handle: ModelHandle, counters: ModelCounters) -> kpb.ModelStatistics:
    c = counters
    stats = kpb.ModelStatistics(
        name=handle.name, version=MODEL_VERSION, last_inference=c.last_inference_ms,
        inference_count=c.success_count,
        inference_stats=kpb.InferStatistics(
            success=kpb.StatisticDuration(count=c.success_count, ns=c.success_ns),
            fail=kpb.StatisticDuration(count=c.fail_count, ns=c.fail_ns),
            queue=kpb.StatisticDuration(count=c.success_count, ns=c.queue_ns),
            compute_infer=kpb.StatisticDuration(count=c.success_count, ns=c.compute_ns),
            # Hits cost no engine time; Triton reports lookup time here, which
            # is not measured separately.
            cache_hit=kpb.StatisticDuration(count=c.cache_hit_count, ns=0),
            cache_miss=kpb.StatisticDuration(count=c.cache_miss_count, ns=0)))
    engine_stats = handle.engine.stats_if_open() if handle.engine is not None else None
    if engine_stats is not None:
        stats.execution_count = engine_stats.decode_steps
    return stats
