"""OpenAI request JSON -> core requests: every field mapped, every bad value
a 400 naming its param."""
from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.core import ChatMessage, GenerationOptions, StructuredOutput
from runtime.http.converters import chat_call, completion_call, embedding_call
from runtime.http.errors import InvalidParam, error_reply

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> Any:
    return chat_call({"model": "tiny", "messages": USER, **fields})


def refused(fn: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI error object a body gets."""
    with pytest.raises(InvalidParam) as err:
        fn(body)
    status, reply, _ = error_reply(err.value)
    assert status == 400
    return reply["error"]


def test_chat_fields_map_onto_generation_options() -> None:
    call = chat(max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=11, stop="END",
                frequency_penalty=0.1, presence_penalty=-0.2, top_k=40, min_p=0.05,
                repeat_penalty=1.1, penalty_last_n=32, ignore_eos=True, n=1,
                user="u1", metadata={"a": "b"}, store=False, parallel_tool_calls=False)
    assert call.request.model == "tiny"
    assert call.request.messages == (ChatMessage("user", "hi"),)
    assert call.request.options == GenerationOptions(
        max_tokens=7, temperature=0.5, top_p=0.9, top_k=40, seed=11, stop=("END",),
        min_p=0.05, repeat_penalty=1.1, frequency_penalty=0.1, presence_penalty=-0.2,
        penalty_last_n=32, ignore_eos=True)
    assert not call.streaming.stream and not call.logprobs


def test_unset_and_null_fields_leave_server_defaults() -> None:
    call = chat(temperature=None, max_tokens=None, stop=None, seed=None, stream=None)
    assert call.request.options == GenerationOptions()


def test_max_tokens_and_max_completion_tokens() -> None:
    assert chat(max_tokens=5).request.options.max_tokens == 5
    assert chat(max_tokens=5, max_completion_tokens=5).request.options.max_tokens == 5
    err = refused(chat_call, {"messages": USER, "max_tokens": 5, "max_completion_tokens": 6})
    assert err["param"] == "max_completion_tokens"
    assert refused(chat_call, {"messages": USER, "max_tokens": 0})["param"] == "max_tokens"
    err = refused(chat_call, {"messages": USER, "max_completion_tokens": -1})
    assert err["param"] == "max_completion_tokens"


def test_model_may_be_omitted_but_must_be_a_short_string() -> None:
    assert chat_call({"messages": USER}).request.model == ""
    assert refused(chat_call, {"messages": USER, "model": 3})["param"] == "model"
    assert refused(chat_call, {"messages": USER, "model": "m" * 65})["param"] == "model"


def test_content_parts_are_joined_and_developer_is_system() -> None:
    call = chat_call({"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                     "text": "b"}],
         "name": "ward"},
        {"role": "assistant", "content": "ok", "refusal": None}]})
    assert call.request.messages == (ChatMessage("system", "be brief"),
                                     ChatMessage("user", "a\nb"), ChatMessage("assistant", "ok"))


@pytest.mark.parametrize(("message", "param", "code"), [
    ({"role": "user", "content": [{"type": "text", "text": "a"},
                                  {"type": "image_url", "image_url": {"url": "x"}}]},
     "messages[0].content[1].type", "unsupported_value"),
    ({"role": "user", "content": [{"type": "input_audio"}]}, "messages[0].content[0].type",
     "unsupported_value"),
    ({"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]},
     "messages[0].content[0].x", "unknown_parameter"),
    ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages[0].content[0].text",
     None),
    ({"role": "user", "content": None}, "messages[0].content", None),
    ({"role": "user", "content": 5}, "messages[0].content", None),
    ({"role": "user"}, "messages[0].content", None),
    ({"content": "hi"}, "messages[0].role", None),
    ({"role": "tool", "content": "42", "tool_call_id": None}, "messages[0].role",
     "unsupported_value"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
     "messages[0].tool_calls", "unsupported_parameter"),
    ({"role": "user", "content": "hi", "colour": "red"}, "messages[0].colour",
     "unknown_parameter"),
    ({"role": "user", "content": "bad \ud800 surrogate"}, "messages[0].content", None),
    ("hi", "messages[0]", None),
])
def test_bad_messages_are_named(message: Any, param: str, code: str | None) -> None:
    err = refused(chat_call, {"messages": [message]})
    assert (err["param"], err["code"]) == (param, code)
    assert err["message"].startswith(f"{param}: ")


def test_messages_must_be_a_list() -> None:
    assert refused(chat_call, {"messages": "hi"})["param"] == "messages"
    assert refused(chat_call, {})["param"] == "messages"


@pytest.mark.parametrize("field", ["tools", "tool_choice", "functions", "function_call",
                                   "audio", "prediction", "web_search_options"])
def test_unsupported_openai_features_are_refused_by_name(field: str) -> None:
    err = refused(chat_call, {"messages": USER, field: "auto" if field == "tool_choice"
                              else [{"type": "function", "function": {"name": "f"}}]})
    assert (err["param"], err["code"]) == (field, "unsupported_parameter")
    assert "not supported" in err["message"]


def test_unknown_fields_are_refused_by_name() -> None:
    err = refused(chat_call, {"messages": USER, "temprature": 0.5})
    assert (err["param"], err["code"]) == ("temprature", "unknown_parameter")
    # a completions-only field is unknown to chat
    assert refused(chat_call, {"messages": USER, "echo": False})["param"] == "echo"


def test_only_one_choice() -> None:
    err = refused(chat_call, {"messages": USER, "n": 2})
    assert (err["param"], err["code"]) == ("n", "unsupported_value")
    assert chat(n=1).request.options == GenerationOptions()


def test_logit_bias_and_modalities() -> None:
    assert chat(logit_bias={}, modalities=["text"]).request.options == GenerationOptions()
    assert refused(chat_call, {"messages": USER, "logit_bias": {"5": 10}})["param"] == \
        "logit_bias"
    assert refused(chat_call, {"messages": USER, "modalities": ["text", "audio"]})["param"] \
        == "modalities"


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", "hot"), ("temperature", True), ("temperature", float("inf")),
    ("temperature", 10**400), ("top_p", [1]), ("seed", 1.5), ("seed", "1"), ("top_k", 2.0),
    ("stop", 5), ("stop", ["a", 5]), ("stream", "yes"), ("ignore_eos", 1),
    ("max_tokens", 1.0), ("presence_penalty", "x"), ("grammar", 5),
])
def test_wrong_types_name_the_field(field: str, value: Any) -> None:
    err = refused(chat_call, {"messages": USER, field: value})
    assert err["param"].split("[")[0] == field


def test_stop_list_and_surrogates() -> None:
    assert chat(stop=["a", "b"]).request.options.stop == ("a", "b")
    assert refused(chat_call, {"messages": USER, "stop": ["a", "\udfff"]})["param"] == "stop[1]"


def test_streaming_options() -> None:
    call = chat(stream=True, stream_options={"include_usage": True})
    assert call.streaming.stream and call.streaming.include_usage
    assert not chat(stream=True).streaming.include_usage
    err = refused(chat_call, {"messages": USER, "stream_options": {"include_usage": True}})
    assert err["param"] == "stream_options"
    err = refused(chat_call, {"messages": USER, "stream": True,
                              "stream_options": {"include_usge": True}})
    assert err["param"] == "stream_options.include_usge"


def test_logprobs_for_chat() -> None:
    call = chat(logprobs=True, top_logprobs=3)
    assert call.logprobs
    assert (call.request.options.logprobs, call.request.options.top_logprobs) == (True, 3)
    assert refused(chat_call, {"messages": USER, "top_logprobs": 2})["param"] == "top_logprobs"
    err = refused(chat_call, {"messages": USER, "logprobs": True, "top_logprobs": 21})
    assert err["param"] == "top_logprobs"
    assert refused(chat_call, {"messages": USER, "logprobs": 1})["param"] == "logprobs"


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"]}


def test_response_formats() -> None:
    assert chat(response_format={"type": "text"}).request.options.structured is None
    assert chat(response_format={"type": "json_object"}).request.options.structured == \
        StructuredOutput("json_object")
    structured = chat(response_format={"type": "json_schema", "json_schema": {
        "name": "reply", "schema": SCHEMA, "strict": True}}).request.options.structured
    assert structured is not None and structured.kind == "json_schema"
    assert json.loads(structured.spec) == SCHEMA
    schemaless = chat(response_format={"type": "json_schema", "json_schema": {"name": "r"}})
    assert schemaless.request.options.structured == StructuredOutput("json_object")
    assert chat(grammar='root ::= "yes" | "no"').request.options.structured == \
        StructuredOutput("grammar", 'root ::= "yes" | "no"')


@pytest.mark.parametrize(("response_format", "param"), [
    ({"type": "xml"}, "response_format.type"),
    ({}, "response_format.type"),
    ("json", "response_format"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": SCHEMA}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "r", "schema": "{}"}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "r", "strict": "yes"}},
     "response_format.json_schema.strict"),
    ({"type": "json_schema", "json_schema": {"name": "r", "shema": {}}},
     "response_format.json_schema.shema"),
    ({"type": "json_object", "extra": 1}, "response_format.extra"),
])
def test_bad_response_formats_are_named(response_format: Any, param: str) -> None:
    assert refused(chat_call, {"messages": USER, "response_format": response_format})[
        "param"] == param


def test_grammar_and_json_format_do_not_mix() -> None:
    err = refused(chat_call, {"messages": USER, "grammar": "root ::= \"a\"",
                              "response_format": {"type": "json_object"}})
    assert err["param"] == "grammar"
    assert refused(chat_call, {"messages": USER, "grammar": "  "})["param"] == "grammar"


# ---- completions -----------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "text", "tokens"), [
    ("hello", "hello", ()),
    (["hello"], "hello", ()),
    ([1, 2, 3], "", (1, 2, 3)),
    ([[4, 5]], "", (4, 5)),
])
def test_completion_prompts(prompt: Any, text: str, tokens: tuple[int, ...]) -> None:
    request = completion_call({"model": "tiny", "prompt": prompt}).request
    assert (request.prompt, request.prompt_tokens) == (text, tokens)


@pytest.mark.parametrize(("prompt", "code"), [
    (["a", "b"], "unsupported_value"), ([[1], [2]], "unsupported_value"), ([], None),
    (None, None), (5, None), ([1, "a"], None), ([True, 2], None), ({"text": "a"}, None),
    ("\ud800", None),
])
def test_bad_completion_prompts(prompt: Any, code: str | None) -> None:
    err = refused(completion_call, {"prompt": prompt})
    assert (err["param"], err["code"]) == ("prompt", code)


def test_completion_fields() -> None:
    call = completion_call({"prompt": "x", "max_tokens": 3, "temperature": 0, "logprobs": 2,
                            "stream": True, "echo": False, "suffix": None, "best_of": 1,
                            "user": "u", "response_format": {"type": "json_object"}})
    opts = call.request.options
    assert (opts.max_tokens, opts.temperature, opts.logprobs, opts.top_logprobs) == (3, 0, True, 2)
    assert opts.structured == StructuredOutput("json_object")
    assert call.logprobs and call.streaming.stream
    assert not completion_call({"prompt": "x", "logprobs": None}).logprobs
    zero = completion_call({"prompt": "x", "logprobs": 0})
    assert zero.logprobs and zero.request.options.top_logprobs == 0


@pytest.mark.parametrize(("field", "value", "code"), [
    ("echo", True, "unsupported_value"), ("suffix", "tail", "unsupported_value"),
    ("best_of", 3, "unsupported_value"), ("n", 2, "unsupported_value"),
    ("logprobs", 21, None), ("logprobs", True, None), ("messages", [], "unknown_parameter"),
    ("tools", [], "unknown_parameter"), ("logit_bias", {"1": 1}, "unsupported_parameter"),
])
def test_bad_completion_fields(field: str, value: Any, code: str | None) -> None:
    err = refused(completion_call, {"prompt": "x", field: value})
    assert (err["param"], err["code"]) == (field, code)


# ---- embeddings ------------------------------------------------------------------

def test_embedding_inputs() -> None:
    call = embedding_call({"model": "tiny", "input": "a"})
    assert call.request.inputs == ("a",) and call.request.normalize
    assert call.encoding_format == "float"
    call = embedding_call({"input": ["a", "b"], "encoding_format": "base64", "user": "u",
                           "normalize": False})
    assert call.request.inputs == ("a", "b") and not call.request.normalize
    assert call.encoding_format == "base64"
    # an empty list is the core's to refuse (it names input)
    assert embedding_call({"input": []}).request.inputs == ()


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": [1, 2]}, "input", "unsupported_value"),
    ({"input": [[1, 2]]}, "input", "unsupported_value"),
    ({"input": ["a", 5]}, "input", None),
    ({"input": None}, "input", None),
    ({"input": ["a", "\ud800"]}, "input[1]", None),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format", None),
    ({"input": "a", "dimensions": 8}, "dimensions", "unsupported_parameter"),
    ({"input": "a", "normalize": "yes"}, "normalize", None),
    ({"input": "a", "inputs": "b"}, "inputs", "unknown_parameter"),
])
def test_bad_embedding_requests(body: dict[str, Any], param: str, code: str | None) -> None:
    err = refused(embedding_call, body)
    assert (err["param"], err["code"]) == (param, code)


@pytest.mark.parametrize(("field", "value", "limit"), [
    ("penalty_last_n", 2**28, "131072"), ("top_k", 2**40, "2147483647"),
    ("seed", 2**32 - 1, "4294967294"), ("stop", ["s"] * 17, "16"),
])
def test_budgets_are_the_cores_and_name_the_field_and_limit(field: str, value: Any,
                                                            limit: str) -> None:
    """The ranges come from the core's table, checked before the request
    goes anywhere.  Fails on e3a5e70 for penalty_last_n and top_k: the
    gateway passed them on (one to llama.cpp's allocation of 4 bytes per
    unit, the other to an OverflowError in the binding)."""
    err = refused(chat_call, {"messages": USER, field: value})
    assert err["param"] == field and limit in err["message"]


def test_completion_logprobs_errors_keep_the_openai_spelling() -> None:
    err = refused(completion_call, {"prompt": "x", "logprobs": -1})
    assert err["param"] == "logprobs" and "[0, 20]" in err["message"]
    err = refused(chat_call, {"messages": USER, "max_completion_tokens": 0})
    assert err["param"] == "max_completion_tokens"


def test_model_names_with_control_characters_are_refused() -> None:
    """SECURITY-CASES 33.  Fails on e3a5e70: only the length was checked."""
    assert refused(chat_call, {"messages": USER, "model": "tiny\n"})["param"] == "model"


def test_a_lone_surrogate_in_a_schema_names_the_schema() -> None:
    """Fails on e3a5e70: the schema went to grammar_for, whose encode raised
    UnicodeEncodeError (a 500)."""
    from runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as err:
        chat(response_format={"type": "json_schema", "json_schema": {
            "name": "r", "schema": {"enum": ["\ud800"]}}})
    status, reply, _ = error_reply(err.value)
    assert (status, reply["error"]["param"]) == (400, "response_format.json_schema.schema")
