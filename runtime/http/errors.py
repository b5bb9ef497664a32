"""Exception families to HTTP statuses and OpenAI error bodies: the one table.

It sits beside server/status.py (the gRPC table) and maps the same families.
OpenAI clients read `{"error": {"message", "type", "param", "code"}}` and
pick their exception class from the status (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 429 RateLimitError, ...), so the
status carries the meaning and `param` names the request field at fault.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from runtime import errors


@dataclass(frozen=True)
class HttpError:
    status: int
    type: str
    code: str | None = None


INVALID = HttpError(400, "invalid_request_error")
INTERNAL = HttpError(500, "server_error", "internal_error")

# Order matters: the first family an exception belongs to wins, so
# subclasses (ModelLoadError, WrongKey, ConfigError) come before their bases.
HTTP_ERROR_OF: list[tuple[type[BaseException], HttpError]] = [
    (errors.InvalidArgument, INVALID),
    # On this surface the only named things a request can miss are models.
    (errors.NotFound, HttpError(404, "invalid_request_error", "model_not_found")),
    (errors.AlreadyExists, HttpError(409, "invalid_request_error", "already_exists")),
    (errors.ResourceExhausted, HttpError(429, "rate_limit_error", "rate_limit_exceeded")),
    # A model that failed to load, or a chat request to a model without a
    # chat template: the request cannot be served as asked (the canonical
    # gRPC-to-HTTP mapping of FAILED_PRECONDITION is 400 too).
    (errors.FailedPrecondition, HttpError(400, "invalid_request_error", "failed_precondition")),
    (errors.Unavailable, HttpError(503, "server_error", "service_unavailable")),
    (errors.Unauthenticated, HttpError(401, "authentication_error", "invalid_api_key")),
    (errors.PermissionDenied, HttpError(403, "permission_error", "permission_denied")),
    (errors.DeadlineExceeded, HttpError(504, "server_error", "timeout")),
    # The client went away; nobody reads this, but the status says why in logs.
    (errors.Cancelled, HttpError(499, "invalid_request_error", "cancelled")),
    (errors.IntegrityError, HttpError(500, "server_error", "data_loss")),
    (errors.StorageError, HttpError(503, "server_error", "storage_unavailable")),
    (errors.InternalError, INTERNAL),
]

# Core messages start with the field they are about ("max_tokens: must be
# >= 1 ...", "messages[2].role: ..."), which becomes `param`.
_LEADING_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\]|\.[A-Za-z_][A-Za-z0-9_]*)*): ")
# Core field names that an OpenAI request spells differently.
_PARAM_ALIASES = {"prompt_tokens": "prompt", "json_schema": "response_format.json_schema.schema"}


class InvalidParam(errors.InvalidArgument):
    """A request field the gateway itself refuses; `code` refines the 400
    ("unsupported_parameter", "unknown_parameter", ...)."""

    def __init__(self, param: str, message: str, code: str | None = None) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.code = code


def http_error_of(exc: BaseException) -> HttpError:
    for family, mapped in HTTP_ERROR_OF:
        if isinstance(exc, family):
            return mapped
    return INTERNAL


def param_of(exc: BaseException) -> str | None:
    if isinstance(exc, InvalidParam):
        return exc.param
    if isinstance(exc, errors.NotFound):
        return "model"
    if not isinstance(exc, errors.InvalidArgument):
        return None
    match = _LEADING_FIELD.match(str(exc))
    if match is None:
        return None
    name = match.group(1)
    head = re.split(r"[.\[]", name, maxsplit=1)[0]
    return _PARAM_ALIASES.get(head, name)


def error_body(message: str, mapped: HttpError, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": mapped.type, "param": param,
                      "code": code if code is not None else mapped.code}}


def error_reply(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, extra headers) for an exception.  Messages of
    Hearth's own families go to the client verbatim (they name the field);
    anything else is a bug and says only "internal error"."""
    mapped = http_error_of(exc)
    message = str(exc) if isinstance(exc, errors.HearthError) else "internal error"
    code = exc.code if isinstance(exc, InvalidParam) else None
    headers: dict[str, str] = {}
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after_s is not None:
        # Retry-After has whole seconds; OpenAI's clients prefer retry-after-ms.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        headers["retry-after-ms"] = str(max(1, int(exc.retry_after_s * 1000)))
    if isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return mapped.status, error_body(message, mapped, param_of(exc), code), headers
