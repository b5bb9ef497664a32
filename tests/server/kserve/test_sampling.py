"""Sampling settings from sampling_parameters JSON and request parameters."""
from __future__ import annotations

import json

import pytest

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.core import GenerationOptions
from runtime.core.types import StructuredOutput
from runtime.core.validation import check_options, check_stops, sampling_from
from runtime.errors import InvalidArgument
from runtime.server.kserve.sampling import (
    KNOWN_KEYS,
    generation_options,
    parameter_value,
    parse_sampling_json,
)


def test_vllm_style_json_maps_to_core_options() -> None:
    opts = generation_options(parse_sampling_json(json.dumps({
        "temperature": 0.2, "top_p": 0.9, "top_k": 5, "max_tokens": 30, "seed": 7,
        "stop": ["\n\n", "END"], "min_p": 0.1, "repetition_penalty": 1.1,
        "frequency_penalty": 0.5, "presence_penalty": -0.5, "penalty_last_n": 32,
        "ignore_eos": True, "adapter": "clinic"}).encode()), {})
    assert opts == GenerationOptions(
        temperature=0.2, top_p=0.9, top_k=5, max_tokens=30, seed=7, stop=("\n\n", "END"),
        min_p=0.1, repeat_penalty=1.1, frequency_penalty=0.5, presence_penalty=-0.5,
        penalty_last_n=32, ignore_eos=True, adapter="clinic")
    with pytest.raises(InvalidArgument, match="adapter: must be a string"):
        generation_options({"adapter": 3}, {})


def test_nothing_given_means_server_defaults() -> None:
    assert generation_options({}, {}) == GenerationOptions()


def test_numbers_and_booleans_written_as_strings() -> None:
    opts = generation_options({"temperature": "0.1", "max_tokens": "12", "ignore_eos": "True"},
                              {})
    assert (opts.temperature, opts.max_tokens, opts.ignore_eos) == (0.1, 12, True)


def test_request_parameters_are_a_second_source() -> None:
    opts = generation_options({"temperature": 0}, {"max_tokens": 5, "top_p": 1, "stop": "x"})
    assert (opts.temperature, opts.max_tokens, opts.top_p, opts.stop) == (0.0, 5, 1.0, ("x",))


def test_vllm_top_k_minus_one_means_no_top_k() -> None:
    assert generation_options({"top_k": -1}, {}).top_k == 0
    assert generation_options({"top_k": -2}, {}).top_k == -2     # the core refuses it


@pytest.mark.parametrize(("from_json", "from_params", "message"), [
    ({"temprature": 1}, {}, "sampling_parameters.temprature: unknown sampling parameter"),
    ({}, {"n": 2}, "parameters.n: unknown sampling parameter"),
    ({"top_p": 0.5}, {"top_p": 0.5}, "parameters.top_p: also set in sampling_parameters.top_p"),
    ({"temperature": "hot"}, {}, "sampling_parameters.temperature: must be a number"),
    ({"temperature": True}, {}, "sampling_parameters.temperature: must be a number"),
    ({"temperature": None}, {}, "sampling_parameters.temperature: must be a number"),
    ({"max_tokens": 1.5}, {}, "sampling_parameters.max_tokens: must be an integer"),
    ({"max_tokens": True}, {}, "sampling_parameters.max_tokens: must be an integer"),
    ({"ignore_eos": 1}, {}, "sampling_parameters.ignore_eos: must be true or false"),
    ({"stop": ["a", 3]}, {}, r"sampling_parameters.stop\[1\]: must be a string"),
    ({"stop": 3}, {}, "sampling_parameters.stop: must be a string or a list"),
    ({"grammar": ""}, {}, "sampling_parameters.grammar: must be a non-empty GBNF"),
    ({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}, {},
     "set either grammar or response_format"),
    ({"response_format": {"type": "xml"}}, {}, "response_format.type: must be text"),
    ({"response_format": {"type": "json_schema"}}, {},
     "response_format.json_schema.schema: must be a JSON object"),
    ({}, {"response_format": "{oops"}, "parameters.response_format: not valid JSON"),
    ({"response_format": [1]}, {}, "response_format: must be a JSON object"),
    ({"logprobs": 2, "top_logprobs": 2}, {}, "logprobs: an integer here means top_logprobs"),
    ({"logprobs": 1.5}, {}, "logprobs: must be an integer"),
])
def test_bad_settings_name_source_and_key(from_json: dict, from_params: dict,
                                          message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        generation_options(from_json, from_params)


def test_unknown_key_error_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as err:
        generation_options({"best_of": 2}, {})
    assert all(key in str(err.value) for key in KNOWN_KEYS)


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert generation_options({"response_format": {"type": "json_object"}}, {}).structured == \
        StructuredOutput("json_object")
    got = generation_options({"response_format": {"type": "json_schema",
                                                  "json_schema": {"schema": schema}}}, {})
    assert got.structured is not None and got.structured.kind == "json_schema"
    assert json.loads(got.structured.spec) == schema
    assert generation_options({}, {"response_format": '{"type": "json_object"}'}).structured \
        == StructuredOutput("json_object")
    assert generation_options({"response_format": {"type": "text"}}, {}).structured is None
    assert generation_options({"grammar": 'root ::= "yes"'}, {}).structured == \
        StructuredOutput("grammar", 'root ::= "yes"')


def test_logprobs_openai_and_vllm_forms() -> None:
    a = generation_options({"logprobs": True, "top_logprobs": 3}, {})
    assert (a.logprobs, a.top_logprobs) == (True, 3)
    b = generation_options({"logprobs": 3}, {})           # vLLM: logprobs=N
    assert (b.logprobs, b.top_logprobs) == (True, 3)
    c = generation_options({}, {"logprobs": False})
    assert (c.logprobs, c.top_logprobs) == (False, 0)


@pytest.mark.parametrize(("raw", "message"), [
    (b"{not json", "sampling_parameters: not valid JSON"),
    (b"[1, 2]", "sampling_parameters: must be a JSON object"),
    (b"\xff{}", "sampling_parameters: not valid UTF-8"),
])
def test_sampling_json_must_be_an_object(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_sampling_json(raw)


def test_parameter_values_of_every_kind() -> None:
    assert parameter_value(kpb.InferParameter(bool_param=True)) is True
    assert parameter_value(kpb.InferParameter(int64_param=-3)) == -3
    assert parameter_value(kpb.InferParameter(uint64_param=3)) == 3
    assert parameter_value(kpb.InferParameter(double_param=0.5)) == 0.5
    assert parameter_value(kpb.InferParameter(string_param="s")) == "s"
    assert parameter_value(kpb.InferParameter()) is None


def test_json_nested_past_the_stack_is_invalid_argument() -> None:
    """Fails on e3a5e70: json.loads raised RecursionError, an INTERNAL
    error, for sampling_parameters nested 100,000 deep."""
    deep = b'{"response_format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidArgument, match="sampling_parameters: nested too deeply"):
        parse_sampling_json(deep)
    with pytest.raises(InvalidArgument, match=r"parameters\.response_format: nested too deeply"):
        generation_options({}, {"response_format": "[" * 100_000 + "]" * 100_000})


def test_a_lone_surrogate_in_stop_is_invalid_argument() -> None:
    """JSON's \\ud800 escape puts a lone surrogate in a Python string.
    Fails on e3a5e70: the core's stop check raised UnicodeEncodeError
    (INTERNAL)."""
    opts = generation_options(parse_sampling_json(b'{"stop": ["ok", "\\ud800"]}'), {})
    with pytest.raises(InvalidArgument, match=r"stop\[1\]: is not valid Unicode"):
        check_stops(opts.stop)


def test_an_integer_too_large_for_a_float_is_invalid_argument() -> None:
    """Fails on e3a5e70: float() raised OverflowError (INTERNAL)."""
    with pytest.raises(InvalidArgument, match=r"sampling_parameters\.temperature: must be a "
                                              "finite number"):
        generation_options(parse_sampling_json(b'{"temperature": 1' + b"0" * 400 + b"}"), {})


def test_unknown_keys_are_echoed_only_when_plain() -> None:
    """An unknown key goes into the error message: one with a newline (or a
    lone surrogate, which no gRPC status can carry) is shown escaped."""
    with pytest.raises(InvalidArgument) as err:
        generation_options({"a\nb": 1}, {})
    assert "\n" not in str(err.value) and r"sampling_parameters['a\nb']" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        generation_options(parse_sampling_json(b'{"\\udc00": 1}'), {})
    str(err.value).encode("utf-8")


def test_budgets_name_the_hearth_field_and_the_limit() -> None:
    opts = generation_options({"penalty_last_n": 2**28, "repetition_penalty": 1.1}, {})
    with pytest.raises(InvalidArgument, match=r"penalty_last_n: must be in \[-1, 131072\]"):
        sampling_from(opts)
    with pytest.raises(InvalidArgument, match=r"top_logprobs: must be in \[0, 20\]"):
        check_options(generation_options({"logprobs": 10**6}, {}))
