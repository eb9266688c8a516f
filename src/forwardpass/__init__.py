"""forwardpass: fast, monitored neural-network inference.

The public API is the names in ``__all__``; import them from here (``forwardpass.Engine``),
never from the implementation modules, which may move. They are imported on first use, so
``import forwardpass`` stays cheap: it loads neither NumPy nor ONNX Runtime.
"""

from __future__ import annotations

#: ``typing.TYPE_CHECKING`` without importing typing (PEP 781's spelling; mypy honours it).
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = [
    "DataType",
    "Engine",
    "ForwardpassError",
    "HttpApp",
    "HttpRequest",
    "HttpResponse",
    "InferRequest",
    "InferResponse",
    "InternalError",
    "InvalidArgument",
    "InvalidModelConfig",
    "InvalidParameter",
    "ModelConfig",
    "ModelRepository",
    "ModelState",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestTimeout",
    "RequestedOutput",
    "Server",
    "ServerConfig",
    "Tensor",
    "TensorSpec",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "__version__",
]

#: Public name → the module that defines it.
_LAZY: dict[str, str] = {
    "DataType": "forwardpass.datatypes",
    "Engine": "forwardpass.engine",
    "ForwardpassError": "forwardpass.errors",
    "HttpApp": "forwardpass.protocol.http",
    "HttpRequest": "forwardpass.protocol.http",
    "HttpResponse": "forwardpass.protocol.http",
    "InferRequest": "forwardpass.types",
    "InferResponse": "forwardpass.types",
    "InternalError": "forwardpass.errors",
    "InvalidArgument": "forwardpass.errors",
    "InvalidModelConfig": "forwardpass.errors",
    "InvalidParameter": "forwardpass.errors",
    "ModelConfig": "forwardpass.model_config",
    "ModelRepository": "forwardpass.repository",
    "ModelState": "forwardpass.engine",
    "NotFound": "forwardpass.errors",
    "PayloadTooLarge": "forwardpass.errors",
    "PermissionDenied": "forwardpass.errors",
    "RequestTimeout": "forwardpass.errors",
    "RequestedOutput": "forwardpass.types",
    "Server": "forwardpass.serving",
    "ServerConfig": "forwardpass.config",
    "Tensor": "forwardpass.types",
    "TensorSpec": "forwardpass.model_config",
    "Unauthenticated": "forwardpass.errors",
    "Unavailable": "forwardpass.errors",
    "Unsupported": "forwardpass.errors",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forwardpass' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the real names
    from forwardpass.config import ServerConfig
    from forwardpass.datatypes import DataType
    from forwardpass.engine import Engine, ModelState
    from forwardpass.errors import (
        ForwardpassError,
        InternalError,
        InvalidArgument,
        InvalidModelConfig,
        InvalidParameter,
        NotFound,
        PayloadTooLarge,
        PermissionDenied,
        RequestTimeout,
        Unauthenticated,
        Unavailable,
        Unsupported,
    )
    from forwardpass.model_config import ModelConfig, TensorSpec
    from forwardpass.protocol.http import HttpApp, HttpRequest, HttpResponse
    from forwardpass.repository import ModelRepository
    from forwardpass.serving import Server
    from forwardpass.types import InferRequest, InferResponse, RequestedOutput, Tensor
