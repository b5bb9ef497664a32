"""Exception families shared by every layer.

Each family says what kind of failure happened, not where.  The gRPC layer
maps families to status codes in one table (server/status.py); the CLI maps
them to exit codes.  Raise the most specific family; its message is shown to
the client verbatim, so it names the field or value at fault.
"""
from __future__ import annotations


class HearthError(Exception):
    """Base of all errors Hearth raises on purpose."""


class InvalidArgument(HearthError):
    """The request is malformed: a field out of range, bad UTF-8, too long."""


class NotFound(HearthError):
    """A named thing (model, device, key) does not exist."""


class AlreadyExists(HearthError):
    """A named thing exists already."""


class ResourceExhausted(HearthError):
    """A bounded queue or limit is full; retrying later may succeed."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FailedPrecondition(HearthError):
    """The system is not in a state that allows the operation."""


class Unavailable(HearthError):
    """Temporarily not serving: draining, or the model is still loading."""


class Unauthenticated(HearthError):
    """No valid credentials."""


class PermissionDenied(HearthError):
    """Valid credentials, but not allowed to do this."""


class DeadlineExceeded(HearthError):
    """The caller's deadline passed."""


class Cancelled(HearthError):
    """The caller went away."""


class ModelLoadError(FailedPrecondition):
    """A model file could not be loaded (bad GGUF, llama.cpp refused it)."""


class IntegrityError(HearthError):
    """Stored data failed an integrity check (a tag, a MAC, a hash chain):
    it was corrupted or tampered with.  Nothing from it was used."""


class WrongKey(Unauthenticated):
    """The master key or passphrase does not open this store (the same error
    whatever was wrong, so it reveals nothing)."""


class StorageError(HearthError):
    """The state directory could not be written (disk full, permissions);
    the previous state is intact."""


class ConfigError(InvalidArgument):
    """The configuration is invalid; the message names the key."""


class InternalError(HearthError):
    """A bug or an unexpected failure below us."""
