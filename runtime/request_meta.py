"""Request metadata a caller may set, read alike by every transport (gRPC
metadata, HTTP headers): its request id and the data subject for the audit
log.  Both end up in logs and replies, so they are short and plain."""
from __future__ import annotations

from typing import TypeGuard

from runtime.names import has_control, is_request_id

REQUEST_ID_KEY = "x-request-id"
SUBJECT_KEY = "x-hearth-subject"
MAX_SUBJECT = 256


def sane_request_id(value: object) -> TypeGuard[str]:
    return is_request_id(value)


def sane_subject(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_SUBJECT and not has_control(value)
