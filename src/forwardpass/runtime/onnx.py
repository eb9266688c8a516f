"""ONNX Runtime backend.

Reads the same ``parameters`` keys as Triton's onnxruntime backend (``intra_op_thread_count``,
``inter_op_thread_count``, ``execution_mode``, ``enable_mem_arena``, ``enable_mem_pattern``)
and ``optimization`` (graph level, TensorRT/OpenVINO accelerators). Execution providers are an
explicit ordered list; a provider that is asked for but missing is an error unless the model
sets ``parameters { key: "provider_fallback" value: { string_value: "true" } }``, in which case
the fallback is logged as a warning and reported in ``providers``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import ForwardpassError, InternalError, InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.runtime.base import Backend, BackendIO, NamedArrays
from forwardpass.runtime.parameters import bool_param as _bool_param
from forwardpass.runtime.parameters import int_param as _int_param

__all__ = ["OnnxRuntimeBackend", "describe_onnx", "select_providers", "tensorrt_options"]

log = logging.getLogger("forwardpass.runtime.onnx")

# onnx.TensorProto element types → protocol datatypes.
_ONNX_TYPES: dict[int, DataType] = {
    1: DataType.FP32,
    2: DataType.UINT8,
    3: DataType.INT8,
    4: DataType.UINT16,
    5: DataType.INT16,
    6: DataType.INT32,
    7: DataType.INT64,
    8: DataType.BYTES,
    9: DataType.BOOL,
    10: DataType.FP16,
    11: DataType.FP64,
    12: DataType.UINT32,
    13: DataType.UINT64,
    16: DataType.BF16,
}


def _dims(type_proto: Any) -> tuple[int, ...] | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim
    )


def describe_onnx(path: Path) -> BackendIO:
    """Inputs and outputs an ONNX file declares (full shapes, -1 for symbolic dimensions).

    Raises :class:`InvalidModelConfig` for an unreadable file or an unsupported element type.
    An input/output of unknown rank is listed in ``unranked``; its config gives its dims.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidModelConfig(f"cannot read ONNX model {path.name}: {exc}") from exc
    initializers = {init.name for init in model.graph.initializer}
    unranked: set[str] = set()

    def specs(values: Any, kind: str) -> tuple[TensorSpec, ...]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            if not value.type.HasField("tensor_type"):
                raise InvalidModelConfig(f"{kind} {value.name!r} is not a tensor (sequence/map)")
            elem = value.type.tensor_type.elem_type
            if elem not in _ONNX_TYPES:
                raise InvalidModelConfig(f"{kind} {value.name!r} has unsupported ONNX type {elem}")
            dims = _dims(value.type)
            if dims is None:
                unranked.add(value.name)
                dims = ()
            out.append(TensorSpec(name=value.name, datatype=_ONNX_TYPES[elem], dims=dims))
        return tuple(out)

    return BackendIO(
        inputs=specs(model.graph.input, "input"),
        outputs=specs(model.graph.output, "output"),
        unranked=frozenset(unranked),
    )


_TRT_PRECISIONS = ("FP32", "FP16", "INT8")
#: Triton's onnxruntime backend's TensorRT accelerator parameters → ORT TensorRT EP options.
_TRT_BOOLS = {"trt_engine_cache_enable": "trt_engine_cache_enable"}
_TRT_INTS = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "max_partition_iterations": "trt_max_partition_iterations",
    "min_subgraph_size": "trt_min_subgraph_size",
}
_TRT_PATHS = {
    "trt_engine_cache_path": "trt_engine_cache_path",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
}


def tensorrt_options(params: Mapping[str, str], device_id: int = 0) -> dict[str, Any]:
    """ONNX Runtime's TensorRT provider options for a ``tensorrt`` accelerator's parameters.

    ``precision_mode`` FP32 (default), FP16 or INT8 (INT8 also enables FP16, as TensorRT falls
    back layer by layer to the faster of the two); a value it does not know is refused rather
    than silently run in FP32. A cache path given without ``trt_engine_cache_enable`` turns the
    cache on, since a path for a cache that is off can only be a mistake in the other key.
    """
    options: dict[str, Any] = {"device_id": device_id}
    precision = params.get("precision_mode", "FP32").strip().upper()
    if precision not in _TRT_PRECISIONS:
        raise InvalidModelConfig(
            f"tensorrt parameter precision_mode must be one of {', '.join(_TRT_PRECISIONS)}, "
            f"got {params['precision_mode']!r}"
        )
    if precision in ("FP16", "INT8"):
        options["trt_fp16_enable"] = True
    if precision == "INT8":
        options["trt_int8_enable"] = True
    for key, option in _TRT_INTS.items():
        if (n := _int_param(params, key, minimum=1)) is not None:
            options[option] = n
    for key, option in _TRT_BOOLS.items():
        if (b := _bool_param(params, key)) is not None:
            options[option] = b
    for key, option in _TRT_PATHS.items():
        if key in params:
            if not params[key].strip():
                raise InvalidModelConfig(f"tensorrt parameter {key} must not be empty")
            options[option] = params[key]
    if "trt_engine_cache_path" in options and "trt_engine_cache_enable" not in options:
        options["trt_engine_cache_enable"] = True
    if "trt_int8_calibration_table_name" in options and precision != "INT8":
        raise InvalidModelConfig(
            "tensorrt parameter int8_calibration_table_name needs precision_mode INT8"
        )
    return options


def select_providers(config: ModelConfig, available: Sequence[str]) -> tuple[list[Any], list[str]]:
    """The ordered provider list for ``config`` and the warnings of any fallback taken."""
    wanted: list[Any] = []
    kinds = {g.kind for g in config.instance_group}
    gpu_id = next((g.gpus[0] for g in config.instance_group if g.gpus), 0)
    want_gpu = "KIND_GPU" in kinds or (
        "KIND_AUTO" in kinds and "CUDAExecutionProvider" in available
    )
    if want_gpu:
        for acc in config.optimization.gpu_execution_accelerator:
            if acc.name.lower() == "tensorrt":
                wanted.append(
                    ("TensorrtExecutionProvider", tensorrt_options(acc.parameters, gpu_id))
                )
            else:
                raise InvalidModelConfig(f"unknown gpu_execution_accelerator {acc.name!r}")
        wanted.append(("CUDAExecutionProvider", {"device_id": gpu_id}))
    for acc in config.optimization.cpu_execution_accelerator:
        if acc.name.lower() == "openvino":
            wanted.append(("OpenVINOExecutionProvider", dict(acc.parameters)))
        else:
            raise InvalidModelConfig(f"unknown cpu_execution_accelerator {acc.name!r}")
    wanted.append("CPUExecutionProvider")

    fallback = bool(_bool_param(config.parameters, "provider_fallback"))
    chosen: list[Any] = []
    warnings: list[str] = []
    for entry in wanted:
        name = entry[0] if isinstance(entry, tuple) else entry
        if name in available:
            chosen.append(entry)
        elif fallback:
            warnings.append(f"{name} is not available in this onnxruntime build; falling back")
        else:
            raise InvalidModelConfig(
                f"{name} was requested but this onnxruntime build offers only {list(available)}; "
                "install the matching onnxruntime package or set parameter provider_fallback=true"
            )
    return chosen, warnings


def _precision(chosen: Sequence[Any], first: str) -> str:
    """The precision the session's first provider computes in, where its options set one;
    ``model`` (the model file's own types) otherwise."""
    options: dict[str, Any] = next(
        (o for n, o in (c for c in chosen if isinstance(c, tuple)) if n == first), {}
    )
    if first == "TensorrtExecutionProvider":
        if options.get("trt_int8_enable"):
            return "int8"
        return "fp16" if options.get("trt_fp16_enable") else "fp32"
    if first == "OpenVINOExecutionProvider":
        text = " ".join(str(v) for k, v in options.items() if k in ("device_type", "precision"))
        for name in ("BF16", "FP16", "FP32"):
            if name in text.upper():
                return name.lower()
    return "model"


def _text(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES input as onnxruntime's Python binding needs it: ``str`` elements.

    Given ``bytes`` elements, the binding stores their repr (``"b'abc'"``) in the tensor.
    """
    if array.dtype != np.object_:
        return array
    try:
        text = [x.decode("utf-8") if isinstance(x, bytes) else x for x in array.ravel().tolist()]
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"input {name!r}: onnxruntime string tensors take UTF-8 text only: {exc}"
        ) from None
    out = np.empty(len(text), dtype=np.object_)
    out[:] = text
    return out.reshape(array.shape)


class OnnxRuntimeBackend(Backend):
    """One ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"
    inline_safe = True

    def __init__(self, config: ModelConfig, version_dir: Path, instance: int = 0) -> None:
        super().__init__(config, version_dir, instance)
        self.session: Any = None
        self._bf16_inputs: set[str] = set()
        self._string_inputs: set[str] = set()

    @property
    def model_path(self) -> Path:
        return self.version_dir / (self.config.default_model_filename or "model.onnx")

    def _load(self) -> None:
        import onnxruntime as ort

        path = self.model_path
        if not path.is_file():
            raise InvalidModelConfig(f"model file {path} does not exist")
        params = self.config.parameters
        options = ort.SessionOptions()
        if (n := _int_param(params, "intra_op_thread_count")) is not None:
            options.intra_op_num_threads = n
        if (n := _int_param(params, "inter_op_thread_count")) is not None:
            options.inter_op_num_threads = n
        if (n := _int_param(params, "execution_mode")) is not None:
            if n not in (0, 1):
                raise InvalidModelConfig(
                    f"parameter execution_mode must be 0 (sequential) or 1 (parallel), got {n}"
                )
            options.execution_mode = (
                ort.ExecutionMode.ORT_PARALLEL if n == 1 else ort.ExecutionMode.ORT_SEQUENTIAL
            )
        if (b := _bool_param(params, "enable_mem_arena")) is not None:
            options.enable_cpu_mem_arena = b
        if (b := _bool_param(params, "enable_mem_pattern")) is not None:
            options.enable_mem_pattern = b
        level = self.config.optimization.graph_level
        options.graph_optimization_level = {
            -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        options.log_severity_level = 3

        providers, warnings = select_providers(self.config, ort.get_available_providers())
        for warning in warnings:
            log.warning("model %s: %s", self.config.name, warning)
        self.fallback_warnings = warnings
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise InvalidModelConfig(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self.providers = list(self.session.get_providers())
        self.precision = _precision(providers, self.providers[0] if self.providers else "")
        self._bf16_inputs = {
            i.name for i in self.session.get_inputs() if i.type == "tensor(bfloat16)"
        }
        self._string_inputs = {
            i.name for i in self.session.get_inputs() if i.type == "tensor(string)"
        }

    def _infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays:
        session = self.session
        if session is None:
            raise InternalError("onnxruntime session is not loaded")
        feed: dict[str, Any] = dict(inputs)
        if self._bf16_inputs:
            import onnxruntime as ort

            for name in self._bf16_inputs & feed.keys():
                feed[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(feed[name], 16)
        for name in self._string_inputs & feed.keys():
            feed[name] = _text(name, feed[name])
        results = session.run(list(outputs), feed)
        return dict(zip(outputs, results, strict=True))

    def _check(self, inputs: NamedArrays) -> NamedArrays:
        """String inputs decoded to ``str`` per request, so non-UTF-8 fails only its request."""
        if not self._string_inputs & inputs.keys():
            return inputs
        checked = dict(inputs)
        for name in self._string_inputs & inputs.keys():
            checked[name] = _text(name, inputs[name])
        return checked

    def translate_error(self, exc: Exception) -> ForwardpassError:
        """ORT's INVALID_ARGUMENT raised by a node while running is the data's fault (an index
        out of range): 400, and the batcher finds the request that caused it. One raised
        before running (a feed's dtype, rank or dims) contradicts the config the engine has
        already checked the request against: the model and its config disagree, a 500."""
        text = str(exc)
        if "INVALID_ARGUMENT" in text and "while running" in text:
            return InvalidArgument(f"onnxruntime: {text}")
        return InternalError(f"onnxruntime: {text}")

    def unload(self) -> None:
        self.session = None
