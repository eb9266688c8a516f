"""The one exception tree of forwardpass.

Every error the system raises on purpose derives from :class:`ForwardpassError`.
Third-party exceptions (onnxruntime, onnx, protobuf, yaml, OS errors) are caught at the
boundary where they enter and re-raised as one of these with ``raise ... from exc``.
Protocol adapters map the tree to wire status codes through exactly one table,
:data:`WIRE_STATUS` (read with :func:`http_status` and :func:`grpc_code`):

    ForwardpassError                      code        HTTP  gRPC
    ├── InvalidArgument                   INVALID     400   INVALID_ARGUMENT    bad request
    │   ├── PayloadTooLarge               INVALID     413   RESOURCE_EXHAUSTED  over the size limit
    │   ├── InvalidParameter              INVALID     400   INVALID_ARGUMENT    a named field
    │   └── InvalidModelConfig            INVALID     400   INVALID_ARGUMENT    a wrong config
    ├── NotFound                          NOT_FOUND   404   NOT_FOUND           unknown model/route
    ├── Unavailable                       UNAVAILABLE 503   UNAVAILABLE         not ready, full
    │   └── RequestTimeout                UNAVAILABLE 503   UNAVAILABLE         queue timeout
    ├── Unsupported                       UNSUPPORTED 501   UNIMPLEMENTED       not in this build
    ├── Unauthenticated                   UNAUTHENTICATED 401 UNAUTHENTICATED   no valid credentials
    ├── PermissionDenied                  PERMISSION  403   PERMISSION_DENIED   API not allowed
    └── InternalError                     INTERNAL    500   INTERNAL            a backend failed

Anything that is not a ForwardpassError is a bug: 500 / INTERNAL.
"""

from __future__ import annotations

__all__ = [
    "WIRE_STATUS",
    "ForwardpassError",
    "InternalError",
    "InvalidArgument",
    "InvalidModelConfig",
    "InvalidParameter",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestTimeout",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "grpc_code",
    "http_status",
]


class ForwardpassError(Exception):
    """Base of every error forwardpass raises on purpose."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ForwardpassError):
    """The request (or a command argument) is malformed or does not fit the model."""

    code = "INVALID_ARG"


class PayloadTooLarge(InvalidArgument):
    """The request body exceeds the server's configured limit."""


class InvalidParameter(InvalidArgument):
    """One named field of the request is wrong (the OpenAI API reports it as ``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class InvalidModelConfig(InvalidArgument):
    """A model configuration cannot be parsed or contradicts the model file."""


class NotFound(ForwardpassError):
    """An unknown model, model version or endpoint."""

    code = "NOT_FOUND"


class Unavailable(ForwardpassError):
    """The model exists but cannot take the request now (not ready, overloaded, stopping)."""

    code = "UNAVAILABLE"


class RequestTimeout(Unavailable):
    """The request waited in the queue longer than its timeout."""


class Unsupported(ForwardpassError):
    """The request asks for something this server does not implement."""

    code = "UNSUPPORTED"


class Unauthenticated(ForwardpassError):
    """The request carries no valid credentials for an API that requires them."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ForwardpassError):
    """The caller may not use this API (a restricted group without its header, or disabled)."""

    code = "PERMISSION_DENIED"


class InternalError(ForwardpassError):
    """The model's backend failed; the message carries the backend's own words."""

    code = "INTERNAL"


#: The one table from error class to wire status: (HTTP status, gRPC status code name).
#: Looked up along the exception's MRO, so a subclass without a row takes its parent's.
WIRE_STATUS: dict[type, tuple[int, str]] = {
    ForwardpassError: (400, "UNKNOWN"),
    InvalidArgument: (400, "INVALID_ARGUMENT"),
    PayloadTooLarge: (413, "RESOURCE_EXHAUSTED"),
    NotFound: (404, "NOT_FOUND"),
    Unavailable: (503, "UNAVAILABLE"),
    Unsupported: (501, "UNIMPLEMENTED"),
    Unauthenticated: (401, "UNAUTHENTICATED"),
    PermissionDenied: (403, "PERMISSION_DENIED"),
    InternalError: (500, "INTERNAL"),
}

_BUG = (500, "INTERNAL")


def _wire(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, ForwardpassError):
        for cls in type(exc).__mro__:
            row = WIRE_STATUS.get(cls)
            if row is not None:
                return row
    return _BUG


def http_status(exc: BaseException) -> int:
    """The HTTP status for any exception: ours by class, anything else is a 500."""
    return _wire(exc)[0]


def grpc_code(exc: BaseException) -> str:
    """The name of the ``grpc.StatusCode`` for any exception (``INTERNAL`` for a bug)."""
    return _wire(exc)[1]
