"""Lenient decoding of KServe messages, whose parameters are protobuf maps:
invalid UTF-8 is reported by field, map entries by their key."""
from __future__ import annotations

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.server.registry import MalformedRequest, lenient_deserializer

decode = lenient_deserializer(kpb.ModelInferRequest)


def _request() -> bytes:
    msg = kpb.ModelInferRequest(model_name="tiny", id="abc")
    msg.parameters["temperature"].string_param = "warm"
    msg.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    msg.inputs[0].parameters["note"].string_param = "fine"
    return msg.SerializeToString()


def test_valid_request_decodes() -> None:
    msg = decode(_request())
    assert isinstance(msg, kpb.ModelInferRequest)
    assert msg.parameters["temperature"].string_param == "warm"


def test_bad_utf8_in_map_values_and_nested_fields_is_named() -> None:
    assert decode(_request().replace(b"warm", b"w\xffrm")) == \
        MalformedRequest("parameters['temperature'].string_param: not valid UTF-8")
    assert decode(_request().replace(b"fine", b"f\xffne")) == \
        MalformedRequest("inputs[0].parameters['note'].string_param: not valid UTF-8")
    assert decode(_request().replace(b"text_input", b"text_inpu\xc3")) == \
        MalformedRequest("inputs[0].name: not valid UTF-8")
    assert decode(_request().replace(b"tiny", b"t\xffny")) == \
        MalformedRequest("model_name: not valid UTF-8")


def test_bad_utf8_in_a_map_key_is_still_a_clean_error() -> None:
    # Map keys cannot be bytes in the lenient twin, so the field is not named.
    assert decode(_request().replace(b"temperature", b"temperatur\xff")) == \
        MalformedRequest("the request is not a valid protobuf message")
