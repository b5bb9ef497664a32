"""ModelInferRequest -> InferCall: inputs (typed and raw), parameters, errors."""
from __future__ import annotations

import json

import pytest

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.errors import InvalidArgument, NotFound
from runtime.request_meta import sane_request_id
from runtime.server.kserve.requests import infer_call
from runtime.server.kserve.tensors import serialize_bytes


def request(prompt: bytes = b"hello", stream: bool | None = None, sampling: dict | None = None,
            exclude: bool | None = None, raw: bool = True, shape: tuple = (1,),
            **fields: object) -> kpb.ModelInferRequest:
    """A request as a client builds it: raw contents (tritonclient's default)
    or typed contents."""
    msg = kpb.ModelInferRequest(model_name="tiny", **fields)  # type: ignore[arg-type]

    def add(name: str, datatype: str, value: bytes | bool) -> None:
        tensor = msg.inputs.add(name=name, datatype=datatype, shape=list(shape))
        if raw:
            msg.raw_input_contents.append(
                serialize_bytes([value]) if isinstance(value, bytes) else bytes([value]))
        elif isinstance(value, bytes):
            tensor.contents.bytes_contents.append(value)
        else:
            tensor.contents.bool_contents.append(value)

    add("text_input", "BYTES", prompt)
    if stream is not None:
        add("stream", "BOOL", stream)
    if sampling is not None:
        add("sampling_parameters", "BYTES", json.dumps(sampling).encode())
    if exclude is not None:
        add("exclude_input_in_output", "BOOL", exclude)
    return msg


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_raw_and_typed_contents_read_the_same(raw: bool, shape: tuple) -> None:
    call = infer_call(request("héllo".encode(), stream=True, sampling={"max_tokens": 4},
                              raw=raw, shape=shape, id="r-1"))
    assert (call.id, call.model, call.prompt, call.stream) == ("r-1", "tiny", "héllo", True)
    assert call.options.max_tokens == 4
    assert not call.include_prompt


def test_the_prompt_is_included_only_when_not_streaming_by_default() -> None:
    assert infer_call(request()).include_prompt
    assert infer_call(request(stream=False)).include_prompt
    assert not infer_call(request(stream=False, exclude=True)).include_prompt
    assert not infer_call(request(stream=True)).include_prompt
    assert not infer_call(request(stream=True, exclude=True)).include_prompt
    with pytest.raises(InvalidArgument, match="exclude_input_in_output: must be true when "
                                              "streaming"):
        infer_call(request(stream=True, exclude=False))


def test_triton_parameters() -> None:
    msg = request()
    msg.parameters["triton_enable_empty_final_response"].bool_param = True
    msg.parameters["timeout"].int64_param = 2_500_000
    msg.parameters["temperature"].double_param = 0.0
    call = infer_call(msg)
    assert call.empty_final_response and call.timeout_s == 2.5
    assert call.options.temperature == 0.0
    msg.parameters["timeout"].int64_param = 0
    assert infer_call(msg).timeout_s is None


def _with(msg: kpb.ModelInferRequest, **params: object) -> kpb.ModelInferRequest:
    for key, value in params.items():
        if isinstance(value, bool):
            msg.parameters[key].bool_param = value
        elif isinstance(value, int):
            msg.parameters[key].int64_param = value
        else:
            msg.parameters[key].string_param = str(value)
    return msg


def _two_raw_entries_one_input() -> kpb.ModelInferRequest:
    msg = request()
    msg.raw_input_contents.append(b"\x01")
    return msg


def _contents_and_raw() -> kpb.ModelInferRequest:
    msg = request(stream=True)
    msg.inputs[1].contents.bool_contents.append(True)
    return msg


def _duplicate() -> kpb.ModelInferRequest:
    msg = request(raw=False)
    msg.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents \
        .bytes_contents.append(b"again")
    return msg


def _input_parameter() -> kpb.ModelInferRequest:
    msg = request()
    msg.inputs[0].parameters["binary_data_size"].int64_param = 9
    return msg


def _requested(name: str, classification: bool = False) -> kpb.ModelInferRequest:
    msg = request()
    out = msg.outputs.add(name=name)
    if classification:
        out.parameters["classification"].int64_param = 3
    return msg


def _typed(datatype: str, name: str = "text_input") -> kpb.ModelInferRequest:
    msg = kpb.ModelInferRequest(model_name="tiny")
    msg.inputs.add(name=name, datatype=datatype, shape=[1]).contents.int_contents.append(1)
    return msg


@pytest.mark.parametrize(("msg", "error", "message"), [
    (kpb.ModelInferRequest(), InvalidArgument, "model_name: required"),
    (request(model_version="2"), NotFound, "model_version: model 'tiny' has no version '2'"),
    (_typed("INT32"), InvalidArgument, "text_input: datatype must be BYTES, got INT32"),
    (_typed("BYTES", "prompt"), InvalidArgument, r"inputs\[0\]: unknown input 'prompt'"),
    (kpb.ModelInferRequest(model_name="tiny"), InvalidArgument,
     "text_input: required input is missing"),
    (request(shape=(2,)), InvalidArgument, r"text_input: shape must be \[1\] or \[1, 1\], "
                                           r"got \[2\]"),
    (request(shape=()), InvalidArgument, r"text_input: shape must be .* got \[\]"),
    (request(b""), InvalidArgument, "text_input: must not be empty"),
    (request(b"caf\xc3"), InvalidArgument, "text_input: not valid UTF-8"),
    (request(sampling={"temprature": 1}), InvalidArgument,
     "sampling_parameters.temprature: unknown sampling parameter"),
    (_two_raw_entries_one_input(), InvalidArgument,
     "raw_input_contents: 2 entries for 1 inputs"),
    (_contents_and_raw(), InvalidArgument, "stream: has contents while the request uses "
                                           "raw_input_contents"),
    (_duplicate(), InvalidArgument, "text_input: given more than once"),
    (_input_parameter(), InvalidArgument, "text_input: input parameters are not supported"),
    (_requested("logits"), InvalidArgument, r"outputs\[0\]: unknown output 'logits'"),
    (_requested("text_output", True), InvalidArgument, r"outputs\[0\].parameters: not "
                                                       "supported"),
    (_with(request(), sequence_id=4), InvalidArgument,
     "parameters.sequence_id: sequence batching is not supported"),
    (_with(request(), priority=1), InvalidArgument, "parameters.priority: Hearth admits"),
    (_with(request(), timeout=-1), InvalidArgument, "parameters.timeout: must be microseconds"),
    (_with(request(), timeout="soon"), InvalidArgument, "parameters.timeout: must be "
                                                        "microseconds"),
    (_with(request(), triton_enable_empty_final_response=1), InvalidArgument,
     "parameters.triton_enable_empty_final_response: must be a bool"),
    (_with(request(), tempreture=1), InvalidArgument, "parameters.tempreture: unknown sampling"),
])
def test_bad_requests_name_the_field(msg: kpb.ModelInferRequest, error: type,
                                     message: str) -> None:
    with pytest.raises(error, match=message):
        infer_call(msg)


def test_requesting_text_output_explicitly_is_fine() -> None:
    assert infer_call(_requested("text_output")).prompt == "hello"


@pytest.mark.parametrize("bad", ["r-1\n", "r\r1", "r\x001", "r\x1b[31m", "r\u2028", "r\u202e",
                                 "x" * 257])
def test_request_ids_that_would_split_a_log_line_are_refused(bad: str) -> None:
    """SECURITY-CASES 33.  Fails on e3a5e70: the id was accepted, echoed in
    replies, and "r-1\\n" passed the log-safe check (`$` matches before a
    trailing newline), splitting a log line."""
    with pytest.raises(InvalidArgument, match=r"^id: "):
        infer_call(request(id=bad))
    assert infer_call(request(id="req-7:a.b")).id == "req-7:a.b"
    assert not sane_request_id("r-1\n")          # a log-safe id is the whole string


@pytest.mark.parametrize("bad", ["tiny\n", "ti\0ny", "t\x7f"])
def test_model_names_are_plain_text(bad: str) -> None:
    """Fails on e3a5e70: any non-empty name was looked up (and echoed)."""
    msg = request()
    msg.model_name = bad
    with pytest.raises(InvalidArgument, match=r"^model_name: "):
        infer_call(msg)
