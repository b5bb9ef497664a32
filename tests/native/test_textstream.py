"""UTF-8 hold-back and stop strings across token boundaries (no model)."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import errors
from runtime.native import TextStream


def run(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """Feeds pieces; returns the text released after each piece (decoded,
    which also proves each release is whole UTF-8) and the stop hit."""
    t = TextStream(stops)
    released, hit = [], -1
    for p in pieces:
        hit = t.feed(p)
        released.append(t.take().decode("utf-8"))
        if hit >= 0:
            break
    if hit < 0:
        t.flush()
        released.append(t.take().decode("utf-8"))
    return released, hit


def test_split_multibyte_character_is_held_until_complete() -> None:
    euro = "€".encode()  # 3 bytes
    released, _ = run([b"a" + euro[:1], euro[1:2], euro[2:] + b"b"])
    assert released == ["a", "", "€b", ""]


def test_four_byte_emoji_split_in_every_way() -> None:
    data = "x😀y".encode()
    for cut1 in range(1, len(data)):
        for cut2 in range(cut1, len(data)):
            released, _ = run([data[:cut1], data[cut1:cut2], data[cut2:]])
            assert "".join(released) == "x😀y"


def test_invalid_bytes_become_replacement_characters() -> None:
    released, _ = run([b"ok\xff", b"\xc3(", b"\xe2\x82"])
    assert "".join(released) == "ok\ufffd\ufffd(\ufffd"


def test_stop_string_across_pieces_is_never_released() -> None:
    released, hit = run([b"Hello ", b"wor", b"ld END", b"more"], stops=("world END",))
    assert hit == 0
    assert "".join(released) == "Hello "
    # "wor" was a possible start of the stop, so it was held back.
    assert released[1] == ""


def test_false_start_of_stop_is_released_later() -> None:
    released, hit = run([b"a b", b"c", b"x"], stops=("bcd",))
    assert hit == -1
    assert released == ["a ", "", "bcx", ""]


def test_earliest_stop_wins() -> None:
    _, hit = run([b"one two three"], stops=("three", "two"))
    assert hit == 1


def test_empty_stop_is_rejected() -> None:
    with pytest.raises(errors.InvalidArgument, match="empty"):
        TextStream(("",))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), cuts=st.lists(st.integers(0, 64), max_size=8))
def test_any_bytes_any_split_decode_like_python(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    released, _ = run(pieces)
    assert "".join(released) == data.decode("utf-8", errors="replace")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab€😀 ", max_size=30), stop=st.text(alphabet="ab€", min_size=1,
       max_size=3), cuts=st.lists(st.integers(0, 120), max_size=8))
def test_output_is_text_before_first_stop(text: str, stop: str, cuts: list[int]) -> None:
    data = text.encode()
    bounds = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    released, hit = run(pieces, stops=(stop,))
    pos = text.find(stop)
    if pos >= 0:
        assert hit == 0
        assert "".join(released) == text[:pos]
    else:
        assert hit == -1
        assert "".join(released) == text
