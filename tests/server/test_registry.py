"""Request decoding: malformed messages name the field at fault."""
from __future__ import annotations

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime.server.registry import MalformedRequest, lenient_deserializer


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_valid_message_decodes() -> None:
    data = ipb.GenerateRequest(prompt="hello", max_tokens=3).SerializeToString()
    msg = lenient_deserializer(ipb.GenerateRequest)(data)
    assert isinstance(msg, ipb.GenerateRequest) and msg.prompt == "hello"


def test_invalid_utf8_names_the_field() -> None:
    data = _field(1, b"m") + _field(2, b"caf\xc3")
    out = lenient_deserializer(ipb.GenerateRequest)(data)
    assert out == MalformedRequest("prompt: not valid UTF-8")


def test_invalid_utf8_in_repeated_and_nested_fields() -> None:
    data = _field(8, b"ok") + _field(8, b"\xff")
    assert lenient_deserializer(ipb.GenerateRequest)(data) == \
        MalformedRequest("stop[1]: not valid UTF-8")
    msg = _field(1, b"user") + _field(2, b"\xe2\x28\xa1")
    data = _field(2, _field(1, b"system") + _field(2, b"fine")) + _field(2, msg)
    assert lenient_deserializer(ipb.ChatRequest)(data) == \
        MalformedRequest("messages[1].content: not valid UTF-8")


def test_garbage_is_reported_as_not_protobuf() -> None:
    out = lenient_deserializer(ipb.GenerateRequest)(b"\xff\xff\xff\xff")
    assert out == MalformedRequest("the request is not a valid protobuf message")
