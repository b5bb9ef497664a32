"""Segmentation, token mapping and occlusion arithmetic (pure, no model)."""
from __future__ import annotations

import itertools

import pytest

from runtime import errors
from runtime.transparency.segments import (
    Segment,
    Unit,
    occlusion_scores,
    split,
    token_anchors,
    token_spans,
)

TEXT = "The vault code is 4711. The weather was mild!\nWhat is the code?  \"Yes.\" ok\n\n  end  "


def texts(unit: Unit, text: str = TEXT) -> list[str]:
    return [s.text for s in split(text, unit)]


def test_words_sentences_and_lines() -> None:
    assert texts(Unit.WORD)[:5] == ["The", "vault", "code", "is", "4711."]
    assert texts(Unit.SENTENCE) == ["The vault code is 4711.", "The weather was mild!",
                                    "What is the code?", '"Yes."', "ok", "end"]
    assert texts(Unit.LINE) == ["The vault code is 4711. The weather was mild!",
                                'What is the code?  "Yes." ok', "end"]


def test_a_decimal_point_or_version_does_not_end_a_sentence() -> None:
    assert texts(Unit.SENTENCE, "Pi is 3.14 roughly. Use v1.2 now.") == [
        "Pi is 3.14 roughly.", "Use v1.2 now."]


@pytest.mark.parametrize("unit", list(Unit))
def test_offsets_are_utf8_bytes_and_segments_carry_no_whitespace(unit: Unit) -> None:
    text = "Grüße aus Köln. ✓ Das Wetter\tist mild.\nZeile zwei 日本語."
    raw = text.encode()
    for s in split(text, unit):
        assert raw[s.start:s.end].decode() == s.text
        assert s.text == s.text.strip() and s.text
    # In order and disjoint.
    segs = split(text, unit)
    assert all(a.end <= b.start for a, b in itertools.pairwise(segs))


def test_an_unknown_unit_is_an_invalid_argument() -> None:
    assert Unit.parse("") is Unit.SENTENCE
    with pytest.raises(errors.InvalidArgument, match="unit"):
        Unit.parse("paragraph")


def test_anchors_skip_the_leading_space_a_sentencepiece_tokenizer_adds() -> None:
    prompt = b"Hi there. Bye."
    pieces = [b" Hi", b" there", b".", b" Bye", b"."]
    assert token_anchors(pieces, prompt) == [0, 3, 8, 10, 13]
    assert token_anchors([b"Hi", b" there", b". ", b"Bye."], prompt) == [0, 3, 8, 10]
    assert token_anchors([b"Hi", b" the"], prompt) is None


def test_a_segment_owns_the_tokens_that_start_in_it() -> None:
    """A token like " The" belongs to the segment of its first letter, so
    leaving a sentence out removes its leading-space tokens, not the
    previous sentence's."""
    prompt = "A b. C d."
    segs = split(prompt, Unit.SENTENCE)
    pieces = [b"A", b" b", b".", b" C", b" d", b"."]
    anchors = token_anchors(pieces, prompt.encode())
    assert anchors is not None
    assert token_spans(anchors, segs, offset=1) == [(1, 4), (4, 7)]


def test_whitespace_tokens_between_segments_belong_to_neither() -> None:
    prompt = "A.\n\nB."
    segs = split(prompt, Unit.SENTENCE)
    anchors = token_anchors([b"A", b".", b"\n\n", b"B", b"."], prompt.encode())
    assert anchors is not None
    assert token_spans(anchors, segs) == [(0, 2), (3, 5)]


def test_a_segment_inside_another_segments_token_owns_none() -> None:
    segs = [Segment("ab", 0, 2), Segment("c", 2, 3)]
    assert token_spans([0], segs) == [(0, 1), None]


def test_scores_are_full_minus_occluded_and_zero_when_not_occluded() -> None:
    """Positive when leaving the segment out makes the answer less likely.
    Fails if the difference is reversed."""
    assert occlusion_scores(-2.0, [-9.0, -1.5, None]) == [7.0, -0.5, 0.0]
