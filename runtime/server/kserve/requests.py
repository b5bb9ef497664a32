"""A ModelInferRequest, checked and read into an InferCall.

The signature every Hearth model shows over KServe is the one of Triton's
LLM backends (vLLM, TensorRT-LLM):

  inputs   text_input               BYTES [1]  the prompt
           stream                   BOOL  [1]  optional: one response per chunk
           sampling_parameters      BYTES [1]  optional: a JSON object (sampling.py)
           exclude_input_in_output  BOOL  [1]  optional: leave the prompt out of
                                               the output (default: left out when
                                               streaming, included otherwise)
  outputs  text_output              BYTES [-1]

Shapes [1] and [1, 1] are both accepted for inputs (clients that think in
batches add a leading 1).  The request's `parameters` map holds sampling
settings too, plus Triton's own keys: `timeout` (microseconds, tightens the
gRPC deadline) and `triton_enable_empty_final_response`.  Triton keys for
features Hearth lacks (sequence batching, priorities) are refused rather
than ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.core import GenerationOptions
from runtime.core.validation import check_printable
from runtime.errors import InvalidArgument, NotFound
from runtime.server.kserve.sampling import generation_options, parameter_value, parse_sampling_json
from runtime.server.kserve.tensors import TensorSpec, read_tensor

INPUTS = (
    TensorSpec("text_input", "BYTES", (1,)),
    TensorSpec("stream", "BOOL", (1,), optional=True),
    TensorSpec("sampling_parameters", "BYTES", (1,), optional=True),
    TensorSpec("exclude_input_in_output", "BOOL", (1,), optional=True),
)
OUTPUTS = (TensorSpec("text_output", "BYTES", (-1,)),)
_INPUTS_BY_NAME = {spec.name: spec for spec in INPUTS}
_ACCEPTED_SHAPES = ([1], [1, 1])

MODEL_VERSION = "1"
# Ids and names are echoed into replies and logs: plain text, and short.
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 256
EMPTY_FINAL_KEY = "triton_enable_empty_final_response"
TIMEOUT_KEY = "timeout"
_UNSUPPORTED = {
    "sequence_id": "sequence batching is not supported",
    "sequence_start": "sequence batching is not supported",
    "sequence_end": "sequence batching is not supported",
    "priority": "Hearth admits requests first come, first served",
}


@dataclass(frozen=True)
class InferCall:
    """What a ModelInferRequest asks for, in Hearth's terms."""

    id: str                          # the client's request id, echoed verbatim
    model: str
    prompt: str
    stream: bool
    include_prompt: bool             # the output starts with the prompt
    options: GenerationOptions
    empty_final_response: bool       # streaming: end with an empty, final response
    timeout_s: float | None          # from the `timeout` parameter


def check_version(where: str, model: str, version: str) -> None:
    """A Hearth model has exactly one version, "1"; "" means it too."""
    if version not in ("", MODEL_VERSION):
        raise NotFound(f"{where}: model {model!r} has no version {version!r} (Hearth serves "
                       f"version {MODEL_VERSION} of each model)")


def check_model_name(where: str, name: str) -> None:
    if not name:
        raise InvalidArgument(f"{where}: required")
    check_printable(where, name, MAX_NAME_CHARS)


def _read_inputs(msg: kpb.ModelInferRequest) -> dict[str, list[Any]]:
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgument(f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} "
                              "inputs; give one per input, in the order of inputs")
    values: dict[str, list[Any]] = {}
    for i, tensor in enumerate(msg.inputs):
        spec = _INPUTS_BY_NAME.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"inputs[{i}]: unknown input {tensor.name!r} (this model "
                                  f"takes {', '.join(_INPUTS_BY_NAME)})")
        if tensor.name in values:
            raise InvalidArgument(f"{tensor.name}: given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(f"{tensor.name}: datatype must be {spec.datatype}, "
                                  f"got {tensor.datatype or 'none'}")
        if list(tensor.shape) not in _ACCEPTED_SHAPES:
            raise InvalidArgument(f"{tensor.name}: shape must be [1] or [1, 1], "
                                  f"got {list(tensor.shape)}")
        if tensor.parameters:
            raise InvalidArgument(f"{tensor.name}: input parameters are not supported "
                                  f"(got {', '.join(sorted(tensor.parameters))})")
        if raw and tensor.HasField("contents"):
            raise InvalidArgument(f"{tensor.name}: has contents while the request uses "
                                  "raw_input_contents; use one or the other")
        values[tensor.name] = read_tensor(tensor.name, tensor.datatype, tensor.shape,
                                          tensor.contents, raw[i] if raw else None)
    for spec in INPUTS:
        if not spec.optional and spec.name not in values:
            raise InvalidArgument(f"{spec.name}: required input is missing")
    return values


def _check_outputs(msg: kpb.ModelInferRequest) -> None:
    known = {spec.name for spec in OUTPUTS}
    for i, out in enumerate(msg.outputs):
        if out.name not in known:
            raise InvalidArgument(f"outputs[{i}]: unknown output {out.name!r} (this model "
                                  f"has {', '.join(sorted(known))})")
        if out.parameters:
            raise InvalidArgument(f"outputs[{i}].parameters: not supported (got "
                                  f"{', '.join(sorted(out.parameters))})")


def _split_parameters(msg: kpb.ModelInferRequest) -> tuple[dict[str, Any], bool, float | None]:
    """(sampling settings, empty-final-response flag, timeout in seconds)."""
    sampling: dict[str, Any] = {}
    empty_final = False
    timeout_s = None
    for key, param in msg.parameters.items():
        value = parameter_value(param)
        if key in _UNSUPPORTED:
            raise InvalidArgument(f"parameters.{key}: {_UNSUPPORTED[key]}")
        if key == EMPTY_FINAL_KEY:
            if not isinstance(value, bool):
                raise InvalidArgument(f"parameters.{key}: must be a bool")
            empty_final = value
        elif key == TIMEOUT_KEY:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"parameters.{key}: must be microseconds >= 0, "
                                      f"got {value!r}")
            timeout_s = value / 1e6 if value else None    # 0: no timeout, as in Triton
        else:
            sampling[key] = value
    return sampling, empty_final, timeout_s


def infer_call(msg: kpb.ModelInferRequest) -> InferCall:
    check_printable("id", msg.id, MAX_ID_CHARS)
    check_model_name("model_name", msg.model_name)
    check_version("model_version", msg.model_name, msg.model_version)
    _check_outputs(msg)
    from_parameters, empty_final, timeout_s = _split_parameters(msg)
    inputs = _read_inputs(msg)
    try:
        prompt = inputs["text_input"][0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("text_input: not valid UTF-8") from None
    if not prompt:
        raise InvalidArgument("text_input: must not be empty")
    stream = bool(inputs.get("stream", [False])[0])
    if "exclude_input_in_output" in inputs:
        include_prompt = not inputs["exclude_input_in_output"][0]
        if stream and include_prompt:
            raise InvalidArgument("exclude_input_in_output: must be true when streaming "
                                  "(streamed responses carry only new text)")
    else:
        include_prompt = not stream
    from_json = (parse_sampling_json(inputs["sampling_parameters"][0])
                 if "sampling_parameters" in inputs else {})
    return InferCall(id=msg.id, model=msg.model_name, prompt=prompt, stream=stream,
                     include_prompt=include_prompt,
                     options=generation_options(from_json, from_parameters),
                     empty_final_response=empty_final, timeout_s=timeout_s)
