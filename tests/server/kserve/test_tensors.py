"""The tensor wire codec: raw BYTES and BOOL contents, typed contents, shapes."""
from __future__ import annotations

import struct

import pytest

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.errors import InvalidArgument
from runtime.server.kserve.tensors import (
    MAX_ELEMENTS,
    deserialize_bools,
    deserialize_bytes,
    element_count,
    read_tensor,
    serialize_bytes,
)


def test_bytes_round_trip_matches_the_documented_layout() -> None:
    elements = [b"hello", b"", "héllo".encode()]
    raw = serialize_bytes(elements)
    assert raw[:4] == struct.pack("<I", 5) and raw[4:9] == b"hello"
    assert raw[9:13] == b"\0\0\0\0"
    assert deserialize_bytes("t", raw, 3) == elements


@pytest.mark.parametrize(("raw", "count", "says"), [
    (b"\x05\x00\x00\x00hell", 1, "end inside an element (5 bytes announced, 4 left)"),
    (b"\x05\x00", 1, "end inside an element's length"),
    (serialize_bytes([b"a", b"b"]), 1, "more than the 1 element(s)"),
    (serialize_bytes([b"a"]), 2, "hold 1 element(s), its shape says 2"),
    (b"", 1, "hold 0 element(s)"),
    (b"\xff\xff\xff\xffx", 1, "4294967295 bytes announced"),
])
def test_bad_raw_bytes_are_named(raw: bytes, count: int, says: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^text_input: ") as err:
        deserialize_bytes("text_input", raw, count)
    assert says in str(err.value)


def test_raw_bools() -> None:
    assert deserialize_bools("stream", b"\x01", 1) == [True]
    assert deserialize_bools("stream", b"\x00\x01", 2) == [False, True]
    with pytest.raises(InvalidArgument, match=r"stream: raw BOOL contents are 2 bytes"):
        deserialize_bools("stream", b"\x01\x01", 1)
    with pytest.raises(InvalidArgument, match=r"stream: raw BOOL contents must be bytes 0 or 1"):
        deserialize_bools("stream", b"\x02", 1)


def test_element_count_refuses_negative_and_huge_shapes() -> None:
    assert element_count("x", [1, 1]) == 1
    assert element_count("x", []) == 1
    with pytest.raises(InvalidArgument, match="negative dimension"):
        element_count("x", [-1])
    with pytest.raises(InvalidArgument, match=f"more than {MAX_ELEMENTS} elements"):
        element_count("x", [1 << 40, 1 << 40])


def test_read_tensor_prefers_raw_and_checks_typed_counts() -> None:
    typed = kpb.InferTensorContents(bytes_contents=[b"typed"])
    assert read_tensor("t", "BYTES", [1], typed, serialize_bytes([b"raw"])) == [b"raw"]
    assert read_tensor("t", "BYTES", [1, 1], typed, None) == [b"typed"]
    assert read_tensor("s", "BOOL", [1], kpb.InferTensorContents(bool_contents=[True]),
                       None) == [True]
    with pytest.raises(InvalidArgument, match=r"t: contents.bytes_contents holds 0 element"):
        read_tensor("t", "BYTES", [1], kpb.InferTensorContents(int_contents=[1]), None)
    with pytest.raises(InvalidArgument, match=r"s: contents.bool_contents holds 2 element"):
        read_tensor("s", "BOOL", [1], kpb.InferTensorContents(bool_contents=[True, False]),
                    None)
    with pytest.raises(InvalidArgument, match="datatype INT32 cannot be read"):
        read_tensor("t", "INT32", [1], typed, None)
