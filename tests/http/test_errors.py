"""The exception-family -> HTTP status / OpenAI error table."""
from __future__ import annotations

import inspect

import pytest

from runtime import errors
from runtime.http.errors import InvalidParam, error_reply, http_error_of, param_of
from runtime.server.status import STATUS_OF


@pytest.mark.parametrize(("exc", "status", "kind", "code"), [
    (errors.InvalidArgument("x"), 400, "invalid_request_error", None),
    (errors.ConfigError("x"), 400, "invalid_request_error", None),
    (errors.NotFound("x"), 404, "invalid_request_error", "model_not_found"),
    (errors.AlreadyExists("x"), 409, "invalid_request_error", "already_exists"),
    (errors.ResourceExhausted("x"), 429, "rate_limit_error", "rate_limit_exceeded"),
    (errors.FailedPrecondition("x"), 400, "invalid_request_error", "failed_precondition"),
    (errors.ModelLoadError("x"), 400, "invalid_request_error", "failed_precondition"),
    (errors.Unavailable("x"), 503, "server_error", "service_unavailable"),
    (errors.Unauthenticated("x"), 401, "authentication_error", "invalid_api_key"),
    (errors.WrongKey("x"), 401, "authentication_error", "invalid_api_key"),
    (errors.PermissionDenied("x"), 403, "permission_error", "permission_denied"),
    (errors.DeadlineExceeded("x"), 504, "server_error", "timeout"),
    (errors.Cancelled("x"), 499, "invalid_request_error", "cancelled"),
    (errors.IntegrityError("x"), 500, "server_error", "data_loss"),
    (errors.StorageError("x"), 503, "server_error", "storage_unavailable"),
    (errors.InternalError("x"), 500, "server_error", "internal_error"),
    (ValueError("bug"), 500, "server_error", "internal_error"),
])
def test_every_family_has_its_status(exc: BaseException, status: int, kind: str,
                                     code: str | None) -> None:
    got_status, body, _ = error_reply(exc)
    assert got_status == status == http_error_of(exc).status
    assert body["error"]["type"] == kind
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_the_http_table_covers_every_family_the_grpc_table_does() -> None:
    families = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                if issubclass(cls, errors.HearthError) and cls is not errors.HearthError]
    grpc_mapped = {family for family, _ in STATUS_OF}
    for family in families:
        assert any(issubclass(family, mapped) for mapped in grpc_mapped), family
        # A family that falls through to the default is a family nobody mapped.
        if family is not errors.InternalError:
            assert http_error_of(family("x")).code != "internal_error", family


def test_unexpected_errors_do_not_leak_their_message() -> None:
    _, body, _ = error_reply(KeyError("/secret/path"))
    assert body["error"]["message"] == "internal error"


def test_hearth_messages_go_to_the_client_verbatim() -> None:
    _, body, _ = error_reply(errors.InvalidArgument("top_p: must be in (0, 1], got 2.0"))
    assert body["error"]["message"] == "top_p: must be in (0, 1], got 2.0"
    assert body["error"]["param"] == "top_p"


@pytest.mark.parametrize(("exc", "param"), [
    (errors.InvalidArgument("temperature: must be in [0, 100], got -1.0"), "temperature"),
    (errors.InvalidArgument("messages[2].role: must be one of system"), "messages[2].role"),
    (errors.InvalidArgument("stop[0]: must not be empty"), "stop[0]"),
    (errors.InvalidArgument("prompt_tokens[3]: 99999 is outside the vocabulary"), "prompt"),
    (errors.InvalidArgument("prompt: 5000 tokens do not fit"), "prompt"),
    (errors.InvalidArgument("json_schema: not a valid JSON schema"),
     "response_format.json_schema.schema"),
    (errors.InvalidArgument("grammar: line 1, column 9: rule 'x' is used but never defined"),
     "grammar"),
    (errors.InvalidArgument("model: required when several models are loaded"), "model"),
    (errors.NotFound("model 'x' is not loaded"), "model"),
    (errors.InvalidArgument("the request body is not valid JSON: x: y"), None),
    (errors.Unavailable("model: still loading"), None),
    (InvalidParam("response_format.json_schema.name", "bad"), "response_format.json_schema.name"),
])
def test_param_names_the_field(exc: BaseException, param: str | None) -> None:
    assert param_of(exc) == param


def test_full_queue_says_when_to_retry() -> None:
    status, _, headers = error_reply(errors.ResourceExhausted("queue full", retry_after_s=0.25))
    assert status == 429
    assert headers == {"Retry-After": "1", "retry-after-ms": "250"}
    assert headers["Retry-After"].isdigit()
    _, _, headers = error_reply(errors.ResourceExhausted("queue full", retry_after_s=2.5))
    assert headers == {"Retry-After": "3", "retry-after-ms": "2500"}
    _, _, headers = error_reply(errors.ResourceExhausted("limit"))
    assert headers == {}


def test_unauthenticated_names_the_scheme() -> None:
    _, _, headers = error_reply(errors.Unauthenticated("no"))
    assert headers == {"WWW-Authenticate": "Bearer"}


def test_invalid_param_refines_the_code() -> None:
    status, body, _ = error_reply(InvalidParam("tools", "not supported", "unsupported_parameter"))
    assert status == 400
    assert body["error"] == {"message": "tools: not supported", "type": "invalid_request_error",
                             "param": "tools", "code": "unsupported_parameter"}
