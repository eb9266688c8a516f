"""``triton_python_backend_utils``: the module a Triton Python model imports as ``pb_utils``.

The stub process puts this folder on ``sys.path``, so ``import triton_python_backend_utils``
in a model.py finds it. It offers what Triton's Python backend offers model code: tensors,
requests and responses, errors, config helpers, type conversions, the decoupled response
sender, and BLS (``InferenceRequest(...).exec()``/``async_exec()``), which the stub sends to
the server to run through the called model's batcher.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "Logger",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "using_decoupled_model_transaction_policy",
]

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2

# Triton's TRITONSERVER_DataType numbers, as triton_to_numpy_type takes them.
TYPE_INVALID, TYPE_BOOL, TYPE_UINT8, TYPE_UINT16, TYPE_UINT32, TYPE_UINT64 = 0, 1, 2, 3, 4, 5
TYPE_INT8, TYPE_INT16, TYPE_INT32, TYPE_INT64 = 6, 7, 8, 9
TYPE_FP16, TYPE_FP32, TYPE_FP64, TYPE_STRING, TYPE_BF16 = 10, 11, 12, 13, 14

_NUMPY_BY_TYPE: dict[int, Any] = {
    TYPE_BOOL: np.bool_,
    TYPE_UINT8: np.uint8,
    TYPE_UINT16: np.uint16,
    TYPE_UINT32: np.uint32,
    TYPE_UINT64: np.uint64,
    TYPE_INT8: np.int8,
    TYPE_INT16: np.int16,
    TYPE_INT32: np.int32,
    TYPE_INT64: np.int64,
    TYPE_FP16: np.float16,
    TYPE_FP32: np.float32,
    TYPE_FP64: np.float64,
    TYPE_STRING: np.object_,
}
_NAMES = {
    "BOOL": TYPE_BOOL,
    "UINT8": TYPE_UINT8,
    "UINT16": TYPE_UINT16,
    "UINT32": TYPE_UINT32,
    "UINT64": TYPE_UINT64,
    "INT8": TYPE_INT8,
    "INT16": TYPE_INT16,
    "INT32": TYPE_INT32,
    "INT64": TYPE_INT64,
    "FP16": TYPE_FP16,
    "FP32": TYPE_FP32,
    "FP64": TYPE_FP64,
    "STRING": TYPE_STRING,
    "BYTES": TYPE_STRING,
    "BF16": TYPE_BF16,
}

#: Set by the stub: sends BLS requests and decoupled responses to the server.
_runtime: Any = None


def triton_to_numpy_type(data_type: int) -> Any:
    """The NumPy type of a Triton type number (``TYPE_STRING`` → ``np.object_``)."""
    if data_type == TYPE_BF16:
        raise TritonModelException("numpy has no bfloat16; BF16 tensors travel as uint16")
    return _NUMPY_BY_TYPE.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The Triton type number of a NumPy type (bytes and str arrays are ``TYPE_STRING``)."""
    dtype = np.dtype(data_type)
    if dtype.kind in "OSU":
        return TYPE_STRING
    for number, np_type in _NUMPY_BY_TYPE.items():
        if np_type is not np.object_ and np.dtype(np_type) == dtype:
            return number
    return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The NumPy type of a config type name (``TYPE_FP32`` or ``FP32``)."""
    name = triton_type_string.removeprefix("TYPE_")
    number = _NAMES.get(name)
    if number is None:
        raise TritonModelException(f"unknown Triton type {triton_type_string!r}")
    return triton_to_numpy_type(number)


class TritonError(Exception):
    """An error to put in an :class:`InferenceResponse` (Triton's codes as class attributes)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code})"


class TritonModelException(Exception):
    """Raised by model code (or by pb_utils) to fail the requests it is working on."""

    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class Tensor:
    """A named tensor: ``Tensor(name, ndarray)``."""

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"tensor name must be a string, got {type(name).__name__}")
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
        if array.dtype.kind in "SU":  # fixed-width strings become the object array of bytes
            flat = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in array.ravel()]
            out = np.empty(len(flat), dtype=np.object_)
            out[:] = flat
            array = out.reshape(array.shape)
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule of the tensor (numeric tensors only)."""
        if self._array.dtype == np.object_:
            raise TritonModelException("BYTES tensors cannot be exported through DLPack")
        return self._array.__dlpack__()

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        """A tensor from any object that speaks DLPack (a torch or jax array, a numpy array)."""
        try:
            array = np.from_dlpack(capsule)
        except (TypeError, AttributeError, BufferError) as exc:
            raise TritonModelException(
                f"tensor {name!r}: cannot import from DLPack: {exc}"
            ) from None
        return cls(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


class InferenceResponse:
    """One response: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        for tensor in self._outputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"output_tensors must hold pb_utils.Tensor, got {type(tensor).__name__}"
                )
        if error is not None and not isinstance(error, TritonError):
            error = TritonError(str(error))
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        self._parameters = parameters or {}

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceResponseSender:
    """Sends a decoupled model's responses for one request (any number, then FINAL)."""

    def __init__(self, token: int) -> None:
        self._token = token
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException(
                "this request's response sender is closed: it already sent the FINAL flag"
            )
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("send() without a response needs flags=COMPLETE_FINAL")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if final:
            self._closed = True
        _runtime.send_response(self._token, response, final)

    def close(self) -> None:
        """Older Triton examples end a request this way: the same as sending FINAL alone."""
        if not self._closed:
            self.send(flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def is_cancelled(self) -> bool:
        return False


class InferenceRequest:
    """A request: given to ``execute``, or built by model code for BLS.

    BLS: ``InferenceRequest(model_name=..., inputs=[...], requested_output_names=[...])``
    then ``.exec()`` (blocking) or ``await .async_exec()``; the answer is an
    :class:`InferenceResponse` whose error is set when the called model failed.
    """

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] | None = None,
        requested_output_names: Sequence[str] | None = None,
        request_id: str = "",
        correlation_id: int | str = 0,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        parameters: dict[str, Any] | str | None = None,
        **_ignored: Any,
    ) -> None:
        if isinstance(model_name, bytes):
            model_name = model_name.decode("utf-8")
        self._model_name = model_name
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        self._parameters: dict[str, Any] = parameters or {}
        #: Set on requests the server hands to ``execute``.
        self._token: int | None = None
        self._decoupled = False
        self._sender: InferenceResponseSender | None = None

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def model_name(self) -> str:
        return self._model_name

    def parameters(self) -> str:
        """The request's parameters as JSON text (Triton's form)."""
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> InferenceResponseSender:
        if self._token is None:
            raise TritonModelException("only requests given to execute() have a response sender")
        if not self._decoupled:
            raise TritonModelException(
                "get_response_sender() needs model_transaction_policy { decoupled: true } "
                "in the model's config"
            )
        if self._sender is None:
            self._sender = InferenceResponseSender(self._token)
        return self._sender

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on another model of the server; blocks until it answers."""
        if not self._model_name:
            raise TritonModelException("a BLS request needs model_name")
        responses = _runtime.bls(self, decoupled)
        return iter(responses) if decoupled else responses[0]

    async def async_exec(self, decoupled: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.exec, decoupled)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for spec in model_config.get("input", []):
        if spec.get("name") == name:
            return dict(spec)
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for spec in model_config.get("output", []):
        if spec.get("name") == name:
            return dict(spec)
    return None


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    policy = model_config.get("model_transaction_policy") or {}
    return bool(policy.get("decoupled", False))


class ModelConfig:
    """What ``auto_complete_config`` receives: the config so far, with setters that fill it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = self._config.get("max_batch_size")
        if current not in (None, 0) and current != max_batch_size:
            raise TritonModelException(
                f"max_batch_size is already {current} in the config; cannot set {max_batch_size}"
            )
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        self._config["model_transaction_policy"] = dict(transaction_policy_dict)

    def _add(self, kind: str, tensor: dict[str, Any]) -> None:
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise TritonModelException(f"{kind} {tensor!r} needs {key!r}")
        existing = self._config.setdefault(kind, [])
        for spec in existing:
            if spec.get("name") == tensor["name"]:
                for key in ("data_type", "dims"):
                    if key in spec and spec[key] != tensor[key]:
                        raise TritonModelException(
                            f"{kind} {tensor['name']!r}: the config says {key} {spec[key]!r}, "
                            f"auto_complete_config says {tensor[key]!r}"
                        )
                spec.update({k: v for k, v in tensor.items() if k not in spec})
                return
        existing.append(dict(tensor))

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output)


class Logger:
    """Triton's model logger: messages go to the server's log, named after the model."""

    INFO, WARNING, ERROR, VERBOSE = 0, 1, 2, 3

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        if _runtime is not None:
            _runtime.log(level, str(message))

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.log(message, cls.INFO)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.log(message, cls.WARNING)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.log(message, cls.ERROR)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.log(message, cls.VERBOSE)
