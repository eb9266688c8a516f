"""Backends: each loads one model version and runs batches of named arrays."""

from __future__ import annotations

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig
from forwardpass.runtime.base import Backend, BackendIO, NamedArrays, RequestContext

__all__ = ["Backend", "BackendIO", "NamedArrays", "RequestContext", "backend_class"]


def backend_class(config: ModelConfig) -> type[Backend]:
    """The backend implementation named by ``config.backend`` / ``config.platform``."""
    name = config.backend or config.platform
    if name in ("onnxruntime", "onnxruntime_onnx", "onnx"):
        from forwardpass.runtime.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name in ("pytorch", "pytorch_libtorch"):
        from forwardpass.runtime.pytorch import PyTorchBackend

        return PyTorchBackend
    if name == "openvino":
        from forwardpass.runtime.openvino import OpenVinoBackend

        return OpenVinoBackend
    if name == "null":
        from forwardpass.runtime.null import NullBackend

        return NullBackend
    if name == "python":
        from forwardpass.runtime.python import PythonBackend

        return PythonBackend
    if name == "function":
        from forwardpass.runtime.function import FunctionBackend

        return FunctionBackend
    raise InvalidModelConfig(
        f"model {config.name!r}: unknown backend {name!r} "
        "(available: onnxruntime, openvino, pytorch, python, function, null)"
    )
