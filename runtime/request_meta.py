"""Request metadata a caller may set, read alike by every transport (gRPC
metadata, HTTP headers): its request id and the data subject for the audit
log.  Both end up in logs and replies, so they are short and plain."""
from __future__ import annotations

import re
from typing import TypeGuard

REQUEST_ID_KEY = "x-request-id"
SUBJECT_KEY = "x-hearth-subject"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # fullmatch: `$` passes a trailing newline
MAX_SUBJECT = 256


def sane_request_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def sane_subject(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_SUBJECT
