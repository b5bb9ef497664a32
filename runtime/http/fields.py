"""Typed reads of JSON request fields.  Each failure is an InvalidParam
naming the field, so the client's 400 says exactly what to fix.

JSON `null` reads as "not given" everywhere, as OpenAI's API treats it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any

from runtime.http.errors import InvalidParam

MAX_SHOWN = 40


def show(value: Any) -> str:
    """A value as JSON, cut short: error messages must not echo megabytes."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def check_keys(body: Mapping[str, Any], allowed: Collection[str], where: str = "") -> None:
    """Unknown fields are refused, as OpenAI's API does: a misspelt option
    must not be silently dropped."""
    for key in body:
        if key not in allowed:
            raise InvalidParam(f"{where}{key}", "unrecognized request argument",
                               "unknown_parameter")


def text(value: Any, param: str) -> str:
    """A string that is valid Unicode: JSON's \\ud800 escapes can smuggle in
    lone surrogates, which no tokenizer can take."""
    if not isinstance(value, str):
        raise InvalidParam(param, f"must be a string, got {show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParam(param, "is not valid Unicode (a lone surrogate)") from None
    return value


def opt_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return None if value is None else text(value, key)


def opt_bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidParam(key, f"must be true or false, got {show(value)}")
    return value


def opt_int(body: Mapping[str, Any], key: str, lo: int | None = None,
            hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParam(key, f"must be an integer, got {show(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise InvalidParam(key, f"must be in {bounds}, got {show(value)}")
    return value


def opt_number(body: Mapping[str, Any], key: str) -> float | None:
    """A finite number; ranges are the core's to check (it names the field)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParam(key, f"must be a number, got {show(value)}")
    try:
        number = float(value)
    except OverflowError:          # an integer too large for a float
        raise InvalidParam(key, f"must be a finite number, got {show(value)}") from None
    if not math.isfinite(number):
        raise InvalidParam(key, f"must be a finite number, got {show(value)}")
    return number


def opt_object(body: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParam(key, f"must be an object, got {show(value)}")
    return value


def refuse_unsupported(body: Mapping[str, Any], unsupported: Mapping[str, str]) -> None:
    """Fields of OpenAI's API that Hearth does not implement: given at all
    (not null), they are a 400 rather than a silently different answer."""
    for key, why in unsupported.items():
        if body.get(key) is not None:
            raise InvalidParam(key, f"not supported by this server ({why})",
                               "unsupported_parameter")
