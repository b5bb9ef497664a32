"""Checks of client-supplied values.  Every error names the field, and a
value over its budget names the limit too.

The generation options' ranges, list budgets and server defaults come from
the table in core/options.py; nothing here spells an option.  Everything is
checked before anything is allocated for the request.
"""
from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from typing import Any

from runtime.core.options import BY_NAME, OPTIONS, SAMPLING, GenerationOptions, Kind, Option
from runtime.core.types import ChatMessage
from runtime.errors import InvalidArgument
from runtime.native import Sampling

ROLES = ("system", "user", "assistant")
# More messages than this cannot fit any context (each costs its role's
# template tokens), so rendering them would be work for nothing.
MAX_MESSAGES = 65536

# Characters that would split or disguise a log line: controls (newline,
# CR, NUL, ESC...), invisible format characters (bidirectional overrides),
# lone surrogates and the Unicode line and paragraph separators.
_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))

_MAX_TOKENS = BY_NAME["max_tokens"]
_STOP = BY_NAME["stop"]
_TOP_LOGPROBS = BY_NAME["top_logprobs"]


class OptionError(InvalidArgument):
    """A generation option that is wrong or over its budget.  `option` is
    the table's name and `index` the item of a list, so that a transport
    can name the field in its own spelling; the message names it in the
    core's."""

    def __init__(self, option: str, detail: str, index: int | None = None) -> None:
        where = option if index is None else f"{option}[{index}]"
        super().__init__(f"{where}: {detail}")
        self.option = option
        self.detail = detail
        self.index = index


def _show(value: Any) -> str:
    """A value for an error message, cut short: never megabytes."""
    try:
        text = repr(value)
    except ValueError:                  # an integer past Python's digit limit
        text = "a number of more than 4300 digits"
    return text if len(text) <= 40 else text[:40] + "..."


def _bounds(row: Option) -> str:
    def show(x: float) -> str:
        return f"{x:g}" if row.kind is Kind.FLOAT else str(int(x))

    lo = "-inf" if row.lo is None else show(row.lo)
    if row.hi is None:
        return f">= {lo}"
    return f"in {'(' if row.lo_open else '['}{lo}, {show(row.hi)}]"


def _check_number(row: Option, value: Any) -> None:
    if row.kind is Kind.INT and (isinstance(value, bool) or not isinstance(value, int)):
        raise OptionError(row.name, f"must be an integer, got {_show(value)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(row.name, f"must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:               # an integer too large for a float
        number = math.inf if value > 0 else -math.inf
    ok = math.isfinite(number) or row.kind is Kind.INT
    if row.lo is not None:
        ok = ok and (value > row.lo if row.lo_open else value >= row.lo)
    if row.hi is not None:
        ok = ok and value <= row.hi
    if not ok:
        raise OptionError(row.name, f"must be {_bounds(row)}, got {_show(value)}")


def _check_text(row: Option, value: Any, index: int | None = None) -> None:
    if not isinstance(value, str):
        raise OptionError(row.name, f"must be a string, got {_show(value)}", index)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise OptionError(row.name, "is not valid Unicode (a lone surrogate)", index) from None
    if row.max_bytes is not None and size > row.max_bytes:
        raise OptionError(row.name, f"longer than {row.max_bytes} bytes", index)
    if row.kind is Kind.TEXT and any(unicodedata.category(c) in _UNPRINTABLE for c in value):
        raise OptionError(row.name, "must be plain text (no control or format characters)",
                          index)
    if row.kind is Kind.TEXT_LIST:
        if not value:
            raise OptionError(row.name, "must not be empty", index)
        if "\0" in value:
            raise OptionError(row.name, "must not contain NUL", index)


def _check_list(row: Option, value: Any) -> None:
    if not isinstance(value, tuple | list):
        raise OptionError(row.name, f"must be {row.kind.value}")
    if row.max_items is not None and len(value) > row.max_items:
        raise OptionError(row.name, f"at most {row.max_items} strings, got {len(value)}")
    for i, item in enumerate(value):
        _check_text(row, item, i)


def check_option(row: Option, value: Any) -> None:
    """One option against its row; an unset option (None) always passes."""
    if value is None or row.kind is Kind.STRUCTURED:
        return                          # structured output is core/grammar.py's to check
    if row.kind in (Kind.INT, Kind.FLOAT):
        _check_number(row, value)
    elif row.kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise OptionError(row.name, f"must be true or false, got {_show(value)}")
    elif row.kind is Kind.TEXT:
        _check_text(row, value)
    else:
        _check_list(row, value)


def check_options(opts: GenerationOptions) -> None:
    """Every option in range and within budget, and the ones that depend on
    each other consistent; needs no model.  The core runs the same checks
    on each request (sampling_from, check_stops, native_logprobs,
    check_structured); a transport may run this first to name a field in
    its own spelling (OptionError)."""
    for row in OPTIONS:
        check_option(row, getattr(opts, row.name))
    native_logprobs(opts)
    check_structured(opts)


def sampling_from(opts: GenerationOptions) -> Sampling:
    """Server defaults filled in, every value range-checked."""
    values = {}
    for row in SAMPLING:
        value = getattr(opts, row.name)
        check_option(row, value)
        values[row.name] = row.default if value is None else value
    return Sampling(**values)


def native_logprobs(opts: GenerationOptions) -> int:
    """The core's logprobs argument: -1 none, else how many alternatives."""
    check_option(_TOP_LOGPROBS, opts.top_logprobs)
    if opts.top_logprobs and not opts.logprobs:
        raise OptionError(_TOP_LOGPROBS.name, "needs logprobs to be set")
    return opts.top_logprobs if opts.logprobs else -1


def check_structured(opts: GenerationOptions) -> None:
    """What structured output needs before core/grammar.py reads it."""
    if opts.structured is None:
        return
    try:
        opts.structured.spec.encode("utf-8")
    except UnicodeEncodeError:          # JSON's \ud800 escapes can carry one in
        field = "grammar" if opts.structured.kind == "grammar" else "json_schema"
        raise InvalidArgument(f"{field}: is not valid Unicode (a lone surrogate)") from None
    if opts.ignore_eos:
        raise OptionError("ignore_eos", "cannot be combined with structured output (a "
                          "finished grammar allows only the end of generation)")


def check_stops(stops: tuple[str, ...]) -> tuple[str, ...]:
    check_option(_STOP, stops)
    return stops


def _check_prompt_fits(n_prompt: int, n_ctx_slot: int) -> None:
    if n_prompt >= n_ctx_slot:
        raise InvalidArgument(
            f"prompt: {n_prompt} tokens do not fit the model's context of {n_ctx_slot} tokens "
            f"per request (the prompt must leave room for at least 1 generated token)")


def check_prompt_tokens(tokens: Sequence[int], n_vocab: int, n_ctx_slot: int) -> None:
    """A pre-tokenized prompt: its length against the context first (one
    comparison), then each id against the vocabulary."""
    _check_prompt_fits(len(tokens), n_ctx_slot)
    for i, t in enumerate(tokens):
        if not 0 <= t < n_vocab:
            raise InvalidArgument(
                f"prompt_tokens[{i}]: {t} is outside the vocabulary (0..{n_vocab - 1})")


def check_max_tokens(requested: int | None, n_prompt: int, n_ctx_slot: int, default: int) -> int:
    """The number of tokens to generate; the prompt must leave room for one."""
    _check_prompt_fits(n_prompt, n_ctx_slot)
    room = n_ctx_slot - n_prompt
    if requested is None:
        return min(default, room)
    check_option(_MAX_TOKENS, requested)
    if requested > room:
        raise InvalidArgument(
            f"max_tokens: prompt ({n_prompt} tokens) + max_tokens ({requested}) = "
            f"{n_prompt + requested} tokens exceeds the model's context of {n_ctx_slot} tokens "
            "per request")
    return requested


def check_messages(messages: tuple[ChatMessage, ...]) -> None:
    if not messages:
        raise InvalidArgument("messages: must not be empty")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument(f"messages: at most {MAX_MESSAGES} messages, got "
                              f"{len(messages)}")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role: must be one of {', '.join(ROLES)}, "
                                  f"got {_show(m.role)}")
        if "\0" in m.content:
            raise InvalidArgument(f"messages[{i}].content: must not contain NUL")
        try:
            m.content.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"messages[{i}].content: is not valid Unicode (a lone "
                                  "surrogate)") from None



def check_printable(where: str, value: str, max_chars: int) -> str:
    """A name or id the server echoes into logs and replies: at most
    `max_chars` characters, none of them unprintable."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{where}: longer than {max_chars} characters")
    for i, char in enumerate(value):
        if unicodedata.category(char) in _UNPRINTABLE:
            raise InvalidArgument(f"{where}: character {i} ({char!a}) is not printable; "
                                  "names and ids must be plain text")
    return value
