"""The one exception tree of forwardpass.

Every error the system raises on purpose derives from :class:`ForwardpassError`.
Third-party exceptions (onnxruntime, onnx, protobuf, yaml, OS errors) are caught at the
boundary where they enter and re-raised as one of these with ``raise ... from exc``.
Protocol adapters map the tree to wire status codes in exactly one place
(:func:`http_status` here; gRPC later maps ``code`` the same way).

    ForwardpassError              code               HTTP
    ├── InvalidArgument           INVALID_ARG        400   bad request: JSON, shapes, names
    │   ├── PayloadTooLarge       INVALID_ARG        413   body over the configured size limit
    │   └── InvalidModelConfig    INVALID_ARG        400   a wrong config.pbtxt / config.yaml
    ├── NotFound                  NOT_FOUND          404   unknown model, version or route
    ├── PermissionDenied          PERMISSION_DENIED  403   a feature the operator left off
    ├── Unavailable               UNAVAILABLE        503   not ready, queue full, stopping
    │   └── RequestTimeout        UNAVAILABLE        503   the request's queue timeout expired
    ├── Unsupported               UNSUPPORTED        501   a feature this build does not provide
    └── InternalError             INTERNAL           500   a backend failed while running a batch
"""

from __future__ import annotations

__all__ = [
    "ForwardpassError",
    "InternalError",
    "InvalidArgument",
    "InvalidModelConfig",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestTimeout",
    "Unavailable",
    "Unsupported",
    "http_status",
]


class ForwardpassError(Exception):
    """Base of every error forwardpass raises on purpose."""

    code = "UNKNOWN"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ForwardpassError):
    """The request (or a command argument) is malformed or does not fit the model."""

    code = "INVALID_ARG"
    status = 400


class PayloadTooLarge(InvalidArgument):
    """The request body exceeds the server's configured limit."""

    status = 413


class InvalidModelConfig(InvalidArgument):
    """A model configuration cannot be parsed or contradicts the model file."""


class NotFound(ForwardpassError):
    """An unknown model, model version or endpoint."""

    code = "NOT_FOUND"
    status = 404


class PermissionDenied(ForwardpassError):
    """The request needs a feature the server's operator has not enabled (client shared memory)."""

    code = "PERMISSION_DENIED"
    status = 403


class Unavailable(ForwardpassError):
    """The model exists but cannot take the request now (not ready, overloaded, stopping)."""

    code = "UNAVAILABLE"
    status = 503


class RequestTimeout(Unavailable):
    """The request waited in the queue longer than its timeout."""


class Unsupported(ForwardpassError):
    """The request asks for something this server does not implement."""

    code = "UNSUPPORTED"
    status = 501


class InternalError(ForwardpassError):
    """The model's backend failed; the message carries the backend's own words."""

    code = "INTERNAL"
    status = 500


def http_status(exc: BaseException) -> int:
    """The HTTP status for any exception: ours by class, anything else is a 500."""
    if isinstance(exc, ForwardpassError):
        return exc.status
    return 500
