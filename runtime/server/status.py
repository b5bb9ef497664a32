"""Exception families to gRPC status codes: the one table."""
from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from runtime import errors

STATUS_OF: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.StorageError, grpc.StatusCode.UNAVAILABLE),
    (errors.InternalError, grpc.StatusCode.INTERNAL),
]

RETRY_AFTER_KEY = "retry-after-ms"


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    for family, code in STATUS_OF:
        if isinstance(exc, family):
            return code
    return grpc.StatusCode.INTERNAL


Trailers = tuple[tuple[str, str | bytes], ...]


def abort_args(exc: BaseException) -> tuple[grpc.StatusCode, str, Trailers]:
    """(code, message, trailers) to abort with.  The trailers carry the full
    google.rpc.Status; for a full queue it holds a RetryInfo, and a plain
    `retry-after-ms` trailer says the same for clients that do not parse it."""
    code = status_code_of(exc)
    message = str(exc) if isinstance(exc, errors.HearthError) else "internal error"
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    trailers: Trailers = ()
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(exc.retry_after_s * 1000))
        proto.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        trailers = ((RETRY_AFTER_KEY, str(int(exc.retry_after_s * 1000))),)
    return code, message, tuple(rpc_status.to_status(proto).trailing_metadata) + trailers
