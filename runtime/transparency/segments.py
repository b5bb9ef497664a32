"""Cutting a prompt into the segments an explanation scores, and the
arithmetic of occlusion.  Pure: no engine, no I/O.

Offsets are UTF-8 byte offsets into the prompt, [start, end), the way the
Explain RPC reports them.  A segment never starts or ends with whitespace.

A token belongs to the segment that holds its first non-whitespace byte (a
SentencePiece token such as " The" carries the space before a word), so
leaving a segment out removes whole tokens and the text that remains reads
as the prompt without it.  A segment whose bytes all sit inside tokens that
start in a neighbour (rare: within a word, or punctuation glued to a word
with the word unit) owns no token and cannot be left out alone.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from runtime import errors


class Unit(enum.Enum):
    WORD = "word"
    SENTENCE = "sentence"
    LINE = "line"

    @classmethod
    def parse(cls, name: str) -> Unit:
        """'' means the default, sentence; anything unknown is InvalidArgument."""
        try:
            return cls(name or "sentence")
        except ValueError:
            raise errors.InvalidArgument(
                f"unit: must be one of word, sentence, line; got {name[:40]!r}") from None


@dataclass(frozen=True)
class Segment:
    text: str
    start: int        # UTF-8 byte offsets into the prompt
    end: int


_WORD = re.compile(r"\S+")
# A sentence: from a non-space up to its closing punctuation (with closing
# quotes or brackets) before whitespace, the end of its line, or the end.
_SENTENCE = re.compile(r"\S.*?(?:[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)|(?=[ \t\r]*\n)|$)")
_LINE = re.compile(r"[^\n]+")


def split(text: str, unit: Unit) -> list[Segment]:
    pattern = {Unit.WORD: _WORD, Unit.SENTENCE: _SENTENCE, Unit.LINE: _LINE}[unit]
    segments = []
    for m in pattern.finditer(text):
        raw = m.group()
        stripped = raw.strip()
        if not stripped:
            continue
        begin = m.start() + (len(raw) - len(raw.lstrip()))
        start_b = len(text[:begin].encode("utf-8"))
        segments.append(Segment(stripped, start_b, start_b + len(stripped.encode("utf-8"))))
    return segments


def token_anchors(pieces: Sequence[bytes], prompt: bytes) -> list[int] | None:
    """Where each token of the prompt anchors: the byte offset of its first
    non-whitespace byte, or -1 for a token of whitespace only.  `pieces` are
    the prompt's tokens after any leading special tokens (BOS).  None when
    the pieces do not spell the prompt (allowing the one leading space a
    SentencePiece tokenizer adds)."""
    joined = b"".join(pieces)
    if joined == prompt:
        shift = 0
    elif joined == b" " + prompt:
        shift = 1
    else:
        return None
    anchors = []
    pos = -shift
    for piece in pieces:
        core = len(piece) - len(piece.lstrip())
        anchors.append(pos + core if core < len(piece) else -1)
        pos += len(piece)
    return anchors


def token_spans(anchors: Sequence[int], segments: Sequence[Segment], offset: int = 0
                ) -> list[tuple[int, int] | None]:
    """Each segment's tokens as a [first, last + 1) range of token indices
    (plus `offset`, the leading special tokens), or None when it owns none."""
    spans: list[tuple[int, int] | None] = []
    k = 0
    for seg in segments:
        while k < len(anchors) and anchors[k] < seg.start:
            k += 1
        first = k
        while k < len(anchors) and anchors[k] < seg.end:
            k += 1
        # Trailing whitespace-only tokens belong to the gap, not the segment.
        last = k
        while last > first and anchors[last - 1] == -1:
            last -= 1
        spans.append((first + offset, last + offset) if last > first else None)
        k = last
    return spans


def occlusion_scores(full: float, without: Sequence[float | None]) -> list[float]:
    """score_i = log P(answer | prompt) - log P(answer | prompt without i):
    positive when the segment supports the answer; 0 for a segment that
    could not be left out (None)."""
    return [0.0 if w is None else full - w for w in without]
