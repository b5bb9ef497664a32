"""Identifier checks shared by every layer: model, adapter, token, site,
federation and stored-object names, and the ids a caller may set.

Names are identifiers, never paths or text: letters, digits, '.', '_' and
'-', starting with a letter or digit, at most 64 characters.  The whole
string must match (`fullmatch`: a pattern ending in `$` would also accept a
trailing newline), so no control character (newline, CR, NUL, ...) can get
into a file name, a log line or a certificate through a name.

A bad name is an InvalidArgument (INVALID_ARGUMENT over gRPC); the config
parser turns it into a ConfigError naming the key.
"""
from __future__ import annotations

import re
from typing import TypeGuard

from runtime.errors import InvalidArgument

MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# C0 and C1 control characters and DEL: never part of an id or a log field
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(name: object, what: str = "name") -> str:
    """`name` itself when it is a valid identifier, else InvalidArgument
    naming `what` (the field or option it came from)."""
    if not is_name(name):
        raise InvalidArgument(f"{what}: {name!r} is not a valid name (letters, digits, '.', "
                              "'_' and '-', starting with a letter or digit, at most "
                              f"{MAX_NAME} characters)")
    return name


def is_request_id(value: object) -> TypeGuard[str]:
    """A caller-chosen request id we may echo and log: short and plain."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def has_control(value: str) -> bool:
    """Whether free text (an audit subject, say) holds a control character
    that would split or forge a log line."""
    return _CONTROL.search(value) is not None
