"""The exception-family -> status-code table, and the rich error details."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from runtime import errors
from runtime.server.status import RETRY_AFTER_KEY, abort_args, status_code_of


@pytest.mark.parametrize(("exc", "code"), [
    (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ConfigError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ModelLoadError("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Cancelled("x"), grpc.StatusCode.CANCELLED),
    (errors.IntegrityError("x"), grpc.StatusCode.DATA_LOSS),
    (errors.WrongKey("x"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.StorageError("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.InternalError("x"), grpc.StatusCode.INTERNAL),
    (ValueError("bug"), grpc.StatusCode.INTERNAL),
])
def test_every_family_has_its_code(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_code_of(exc) == code


def test_unexpected_errors_do_not_leak_their_message() -> None:
    _, message, _ = abort_args(KeyError("/secret/path"))
    assert message == "internal error"


def test_resource_exhausted_carries_retry_info() -> None:
    code, message, trailers = abort_args(errors.ResourceExhausted("queue full",
                                                                  retry_after_s=1.5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and message == "queue full"
    meta = dict(trailers)
    assert meta[RETRY_AFTER_KEY] == "1500"
    status = status_pb2.Status.FromString(meta["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 1500
