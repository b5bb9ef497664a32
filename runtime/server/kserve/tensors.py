"""KServe v2 tensors on the wire: shapes, typed contents and raw contents.

A tensor's data travels either in its typed `contents` field or, as stock
clients send it by default, in the request's `raw_input_contents`, one entry
per input.  Raw BOOL data is one byte per element; raw BYTES data is a
sequence of elements, each a 4-byte little-endian length and then that many
bytes.  Every error names the tensor.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.errors import InvalidArgument

_LENGTH = struct.Struct("<I")
# Far above anything a text model takes; it keeps a hostile shape from
# turning into a huge allocation before the data is even looked at.
MAX_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model's signature.  shape: -1 marks a
    dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


def element_count(name: str, shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{name}: shape {list(shape)} has a negative dimension")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidArgument(f"{name}: shape {list(shape)} has more than "
                                  f"{MAX_ELEMENTS} elements")
    return count


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """BYTES elements in the raw form: length-prefixed, back to back."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def deserialize_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """Exactly `count` length-prefixed elements filling all of `raw`."""
    out: list[bytes] = []
    view = memoryview(raw)
    pos = 0
    while pos < len(view):
        if len(out) == count:
            raise InvalidArgument(f"{name}: raw contents hold more than the {count} "
                                  "element(s) its shape says")
        if pos + _LENGTH.size > len(view):
            raise InvalidArgument(f"{name}: raw contents end inside an element's length")
        (length,) = _LENGTH.unpack_from(view, pos)
        pos += _LENGTH.size
        if pos + length > len(view):
            raise InvalidArgument(f"{name}: raw contents end inside an element "
                                  f"({length} bytes announced, {len(view) - pos} left)")
        out.append(bytes(view[pos:pos + length]))
        pos += length
    if len(out) != count:
        raise InvalidArgument(f"{name}: raw contents hold {len(out)} element(s), its shape "
                              f"says {count}")
    return out


def deserialize_bools(name: str, raw: bytes, count: int) -> list[bool]:
    if len(raw) != count:
        raise InvalidArgument(f"{name}: raw BOOL contents are {len(raw)} bytes, its shape "
                              f"says {count} element(s) of 1 byte")
    if any(b > 1 for b in raw):
        raise InvalidArgument(f"{name}: raw BOOL contents must be bytes 0 or 1")
    return [b == 1 for b in raw]


def read_tensor(name: str, datatype: str, shape: Sequence[int],
                typed: kpb.InferTensorContents, raw: bytes | None) -> list[bytes] | list[bool]:
    """The elements of one BYTES or BOOL tensor, from raw contents when the
    request has them, else from the typed contents (an InferTensorContents)."""
    count = element_count(name, shape)
    if datatype == "BYTES":
        if raw is not None:
            return deserialize_bytes(name, raw, count)
        values: list[bytes] | list[bool] = list(typed.bytes_contents)
    elif datatype == "BOOL":
        if raw is not None:
            return deserialize_bools(name, raw, count)
        values = list(typed.bool_contents)
    else:
        raise InvalidArgument(f"{name}: datatype {datatype} cannot be read here")
    if len(values) != count:
        field = "bytes_contents" if datatype == "BYTES" else "bool_contents"
        raise InvalidArgument(f"{name}: contents.{field} holds {len(values)} element(s), its "
                              f"shape says {count}")
    return values
