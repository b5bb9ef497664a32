"""Property-based fuzzing of the gRPC request space (issue 15).

Arbitrary hearth.v1 GenerateRequest / ChatRequest / EmbedRequest and KServe
ModelInferRequest messages (fields drawn from their whole wire ranges, odd
strings, huge numbers, deep JSON) go through the converters and every check
the core makes before it touches a model.  The only exceptions allowed are
the typed families a client is meant to get (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED, NOT_FOUND for an unknown version); a TypeError,
OverflowError, ValueError, UnicodeError or RecursionError leaking would be
an INTERNAL error.  Every message must also fit a gRPC status (UTF-8) on
one log line.

Fails on e3a5e70 (checked by running it there): a KServe top_k or
penalty_last_n past int32 passed the core's checks (it overflowed later in
the binding), `stop` with a JSON \\ud800 escape raised UnicodeEncodeError,
and sampling_parameters nested deeply raised RecursionError.
"""
from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.core import GenerationOptions
from runtime.core.validation import (
    check_max_tokens,
    check_messages,
    check_options,
    check_prompt_tokens,
    check_stops,
    check_structured,
    native_logprobs,
    sampling_from,
)
from runtime.errors import InvalidArgument, NotFound, ResourceExhausted
from runtime.native import ffi
from runtime.native.types import copy_sampling
from runtime.server import converters
from runtime.server.kserve.requests import INPUTS, infer_call
from runtime.server.kserve.sampling import KNOWN_KEYS
from runtime.server.kserve.tensors import serialize_bytes

TYPED = (InvalidArgument, ResourceExhausted, NotFound)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

INT32 = st.integers(-(2**31), 2**31 - 1)
# Small numbers, the edges of the C types and the table's limits, anything.
EDGES = st.sampled_from([-1, 0, 1, 20, 21, 131072, 131073, 2**28, 2**31 - 1, 2**31,
                         2**32 - 2, 2**32 - 1, 2**32, 2**63 - 1, -(2**31) - 1, -(2**63)])
INT64 = st.one_of(st.integers(-3, 50), EDGES, st.integers(-(2**63), 2**63 - 1))
FLOAT32 = st.floats(width=32)                   # NaN and infinities included
# Wire strings are valid UTF-8, but anything else: controls, format
# characters, line separators, very long ones.
WIRE_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(
    ["", "\n", "tiny\n", "a\r\nb", "\0", "\u2028", "\u202e", "x" * 300, "\U0010ffff"]))
# Strings from JSON may also hold lone surrogates (\ud800 escapes).
JSON_TEXT = st.one_of(WIRE_TEXT, st.builds(lambda a, b: a + "\ud800" + b, WIRE_TEXT,
                                           WIRE_TEXT))
HUGE = st.sampled_from([2**31, 2**32, 2**63, 10**30, 10**400, -(10**400)])


def _checked(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except TYPED as exc:
        message = str(exc)
        message.encode("utf-8")                 # a gRPC status carries UTF-8 only
        assert "\n" not in message and "\r" not in message, message


def _core_checks(opts: GenerationOptions) -> None:
    """What the core checks before submitting, in its order; then the
    binding's copy into the C struct, which must take whatever passed."""
    check_options(opts)
    sampling = sampling_from(opts)
    check_stops(opts.stop)
    check_structured(opts)
    native_logprobs(opts)
    check_max_tokens(opts.max_tokens, 3, 512, 64)
    try:
        copy_sampling(sampling, ffi.new("hearth_sampling *"))
    except InvalidArgument as exc:
        raise AssertionError(f"the core passed what the C struct cannot hold: {exc}") from None


# ---- hearth.v1 ---------------------------------------------------------------

_OPTION_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": INT32, "temperature": FLOAT32, "top_p": FLOAT32, "top_k": INT32,
    "seed": st.integers(0, 2**32 - 1), "stop": st.lists(WIRE_TEXT, max_size=20),
    "min_p": FLOAT32, "repeat_penalty": FLOAT32, "frequency_penalty": FLOAT32,
    "presence_penalty": FLOAT32, "penalty_last_n": INT32, "ignore_eos": st.booleans(),
    "grammar": WIRE_TEXT, "logprobs": st.booleans(), "top_logprobs": INT32,
    "adapter": WIRE_TEXT, "model": WIRE_TEXT,
    "response_format": st.builds(ipb.ResponseFormat, type=st.integers(-3, 5),
                                 json_schema=WIRE_TEXT),
}


def _some(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the fields, each drawn from its strategy."""
    return st.fixed_dictionaries({}, optional=fields)


@FUZZ
@given(_some({**_OPTION_FIELDS, "prompt": WIRE_TEXT,
              "prompt_tokens": st.lists(INT32, max_size=30)}))
def test_any_generate_request_fails_only_with_typed_errors(fields: dict[str, Any]) -> None:
    def run() -> None:
        request = converters.generate_request(ipb.GenerateRequest(**fields))
        check_prompt_tokens(request.prompt_tokens, 1000, 512)
        _core_checks(request.options)

    _checked(run)


_MESSAGE = st.builds(ipb.ChatMessage, role=st.one_of(
    st.sampled_from(["user", "system", "assistant", "tool"]), WIRE_TEXT), content=WIRE_TEXT)


@FUZZ
@given(_some({**_OPTION_FIELDS, "messages": st.lists(_MESSAGE, max_size=5)}))
def test_any_chat_request_fails_only_with_typed_errors(fields: dict[str, Any]) -> None:
    def run() -> None:
        request = converters.chat_request(ipb.ChatRequest(**fields))
        check_messages(request.messages)
        _core_checks(request.options)

    _checked(run)


@FUZZ
@given(_some({"model": WIRE_TEXT, "input": st.lists(WIRE_TEXT, max_size=5),
              "normalize": st.booleans()}))
def test_any_embed_request_fails_only_with_typed_errors(fields: dict[str, Any]) -> None:
    _checked(lambda: converters.embed_request(ipb.EmbedRequest(**fields)))


# ---- KServe ------------------------------------------------------------------

_KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.sampled_from(
    ["timeout", "triton_enable_empty_final_response", "sequence_id", "priority"]), WIRE_TEXT)
_JSON_SCALAR = st.one_of(st.none(), st.booleans(), INT64, HUGE, st.floats(), JSON_TEXT)
_JSON = st.recursive(_JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(JSON_TEXT, inner, max_size=4)), max_leaves=12)


def _deep(depth: int) -> str:
    return '{"response_format": ' + "[" * depth + "]" * depth + "}"


# A JSON object of sampling settings, as text: well-formed with known keys,
# any JSON at all, deeply nested, or not JSON.
_SAMPLING_JSON = st.one_of(
    st.dictionaries(_KEYS, _JSON, max_size=6).map(json.dumps),
    _JSON.map(json.dumps),
    st.sampled_from([_deep(100_000), _deep(900), '{"stop": ["\\ud800"]}', "{", "\xff"]),
    st.text(alphabet=string.printable, max_size=30),
)
_PARAMETER = st.one_of(
    st.builds(kpb.InferParameter, bool_param=st.booleans()),
    st.builds(kpb.InferParameter, int64_param=INT64),
    st.builds(kpb.InferParameter, uint64_param=st.one_of(EDGES.filter(lambda n: n >= 0),
                                                         st.integers(0, 2**64 - 1))),
    st.builds(kpb.InferParameter, double_param=st.floats()),
    st.builds(kpb.InferParameter, string_param=st.one_of(WIRE_TEXT, _SAMPLING_JSON)),
)
_NAMES = st.one_of(st.sampled_from([spec.name for spec in INPUTS]), WIRE_TEXT)
_SHAPES = st.one_of(st.sampled_from([[1], [1, 1]]), st.lists(INT64, max_size=3))


@st.composite
def _well_formed(draw: st.DrawFn) -> kpb.ModelInferRequest:
    """A request shaped as the signature says, so that what is drawn for
    the sampling settings and parameters reaches their readers."""
    msg = kpb.ModelInferRequest(model_name="tiny", id=draw(WIRE_TEXT))
    for key, value in draw(st.dictionaries(st.sampled_from(KNOWN_KEYS), _PARAMETER,
                                           max_size=3)).items():
        msg.parameters[key].CopyFrom(value)
    elements = [("text_input", "BYTES", draw(st.binary(min_size=1, max_size=12)))]
    if draw(st.booleans()):
        elements.append(("sampling_parameters", "BYTES",
                         draw(_SAMPLING_JSON).encode("utf-8", "surrogatepass")))
    for name, datatype, element in elements:
        msg.inputs.add(name=name, datatype=datatype, shape=[1])
        msg.raw_input_contents.append(serialize_bytes([element]))
    return msg


@st.composite
def _infer_requests(draw: st.DrawFn) -> kpb.ModelInferRequest:
    msg = kpb.ModelInferRequest(
        model_name=draw(st.one_of(st.just("tiny"), WIRE_TEXT)),
        model_version=draw(st.one_of(st.sampled_from(["", "1"]), WIRE_TEXT)),
        id=draw(WIRE_TEXT))
    for key, value in draw(st.dictionaries(_KEYS, _PARAMETER, max_size=5)).items():
        msg.parameters[key].CopyFrom(value)
    raw = draw(st.booleans())
    inputs = draw(st.lists(st.tuples(_NAMES, st.sampled_from(["BYTES", "BOOL", "INT32", ""]),
                                     _SHAPES), max_size=5))
    for name, datatype, shape in inputs:
        tensor = msg.inputs.add(name=name, datatype=datatype, shape=shape)
        if name == "sampling_parameters":
            element = draw(_SAMPLING_JSON).encode("utf-8", "surrogatepass")
        else:
            element = draw(st.binary(max_size=20))
        if raw:
            msg.raw_input_contents.append(draw(st.one_of(
                st.just(serialize_bytes([element])), st.binary(max_size=12))))
        elif datatype == "BOOL":
            tensor.contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=3)))
        else:
            tensor.contents.bytes_contents.append(element)
    return msg


def _with_parameter(key: str, **value: Any) -> kpb.ModelInferRequest:
    msg = kpb.ModelInferRequest(model_name="tiny")
    msg.parameters[key].CopyFrom(kpb.InferParameter(**value))
    msg.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    msg.raw_input_contents.append(serialize_bytes([b"hi"]))
    return msg


@FUZZ
@given(st.one_of(_well_formed(), _infer_requests()))
@example(_with_parameter("top_k", int64_param=2**40))        # past int32 (e3a5e70: passed)
@example(_with_parameter("penalty_last_n", int64_param=2**28))
@example(_with_parameter("response_format", string_param=_deep(100_000)))
@example(_with_parameter("stop", string_param="\n\n"))
def test_any_infer_request_fails_only_with_typed_errors(msg: kpb.ModelInferRequest) -> None:
    _checked(lambda: _core_checks(infer_call(msg).options))


@FUZZ
@given(st.dictionaries(_KEYS, _JSON, max_size=6))
@example({"stop": ["ok", "\ud800"]})                         # e3a5e70: UnicodeEncodeError
@example({"temperature": 10**400})                          # e3a5e70: OverflowError
def test_any_sampling_parameters_fail_only_with_typed_errors(settings_: dict[str, Any]
                                                             ) -> None:
    """The same, aimed at sampling_parameters: a well-formed request whose
    JSON object holds any keys and values."""
    msg = kpb.ModelInferRequest(model_name="tiny", id="r-1")
    for name, value in (("text_input", b"hello"),
                        ("sampling_parameters", json.dumps(settings_).encode())):
        msg.inputs.add(name=name, datatype="BYTES", shape=[1])
        msg.raw_input_contents.append(serialize_bytes([value]))
    _checked(lambda: _core_checks(infer_call(msg).options))
