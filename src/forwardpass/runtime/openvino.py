"""OpenVINO backend (``backend: "openvino"``), read the way Triton's openvino backend reads it.

The model file is ``default_model_filename`` of the version folder: an OpenVINO IR
(``model.xml`` beside its ``model.bin``, the default) or an ONNX file (``model.onnx``), which
OpenVINO converts when it reads it. The ``parameters`` keys are Triton's openvino backend's:

=========================  ===================================================================
``INFERENCE_NUM_THREADS``  CPU threads of an inference (a non-negative integer; 0: OpenVINO's)
``COMPILATION_NUM_THREADS``  threads compiling the model
``NUM_STREAMS``            ``AUTO``, ``NUMA`` or a positive integer
``PERFORMANCE_HINT``       ``LATENCY``, ``THROUGHPUT`` or ``CUMULATIVE_THROUGHPUT``
``HINT_BF16``              ``YES``: compute in BF16 where the CPU can
``INFERENCE_PRECISION_HINT``  ``f32``, ``bf16`` or ``f16`` (OpenVINO's own property; ours)
=========================  ===================================================================

A value that does not parse is an :class:`InvalidModelConfig` naming the key; other keys are
left alone, as Triton's backend leaves them. A model with operators OpenVINO cannot convert
fails to load with those operators named.

OpenVINO takes a precision hint as a wish: on a CPU without BF16 arithmetic (no AVX512-BF16 or
AMX) it computes in FP32. :attr:`OpenVinoBackend.precision` is what the compiled model reports
it runs with, not what was asked for, so metadata never claims BF16 that is not happening.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import ForwardpassError, InternalError, InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.runtime.base import Backend, BackendIO, NamedArrays

__all__ = [
    "SESSION_PREFIX",
    "OpenVinoBackend",
    "OpenVinoSession",
    "compile_properties",
    "cpu_has_bf16",
    "describe_openvino",
    "precision_name",
    "read_openvino",
]

log = logging.getLogger("forwardpass.runtime.openvino")

INSTALL = "pip install 'forwardpass[openvino]' (the openvino runtime)"

# OpenVINO element type names (Type.get_type_name()) → protocol datatypes.
_OV_TYPES: dict[str, DataType] = {
    "f32": DataType.FP32,
    "f16": DataType.FP16,
    "bf16": DataType.BF16,
    "f64": DataType.FP64,
    "i8": DataType.INT8,
    "i16": DataType.INT16,
    "i32": DataType.INT32,
    "i64": DataType.INT64,
    "u8": DataType.UINT8,
    "u16": DataType.UINT16,
    "u32": DataType.UINT32,
    "u64": DataType.UINT64,
    "boolean": DataType.BOOL,
}

_STREAMS = ("AUTO", "NUMA")
_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise InvalidModelConfig(
            f"backend 'openvino' needs the openvino runtime, which is not installed: {INSTALL}"
        ) from None
    return openvino


def _count(params: Mapping[str, str], key: str, minimum: int) -> int | None:
    if key not in params:
        return None
    text = params[key].strip()
    if not text.isdigit() or int(text) < minimum:
        raise InvalidModelConfig(
            f"parameter {key} must be an integer >= {minimum}, got {params[key]!r}"
        )
    return int(text)


def compile_properties(params: Mapping[str, str]) -> dict[str, Any]:
    """OpenVINO ``compile_model`` properties from a config's ``parameters`` (see the table)."""
    props: dict[str, Any] = {}
    for key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
        if (n := _count(params, key, 0)) is not None:
            props[key] = n
    if "NUM_STREAMS" in params:
        value = params["NUM_STREAMS"].strip().upper()
        if value in _STREAMS:
            props["NUM_STREAMS"] = value
        else:
            props["NUM_STREAMS"] = _count(params, "NUM_STREAMS", 1)
    if "PERFORMANCE_HINT" in params:
        value = params["PERFORMANCE_HINT"].strip().upper()
        if value not in _HINTS:
            raise InvalidModelConfig(
                f"parameter PERFORMANCE_HINT must be one of {', '.join(_HINTS)}, "
                f"got {params['PERFORMANCE_HINT']!r}"
            )
        props["PERFORMANCE_HINT"] = value
    if "HINT_BF16" in params:
        if params["HINT_BF16"].strip().upper() != "YES":
            raise InvalidModelConfig(
                f"parameter HINT_BF16 must be YES (leave it out for FP32), "
                f"got {params['HINT_BF16']!r}"
            )
        props["INFERENCE_PRECISION_HINT"] = "bf16"
    if "INFERENCE_PRECISION_HINT" in params:
        value = params["INFERENCE_PRECISION_HINT"].strip().lower()
        if value not in _PRECISIONS:
            raise InvalidModelConfig(
                "parameter INFERENCE_PRECISION_HINT must be f32, bf16 or f16, "
                f"got {params['INFERENCE_PRECISION_HINT']!r}"
            )
        chosen = _PRECISIONS[value]
        if props.get("INFERENCE_PRECISION_HINT", chosen) != chosen:
            raise InvalidModelConfig(
                f"parameters HINT_BF16 and INFERENCE_PRECISION_HINT={value} contradict each other"
            )
        props["INFERENCE_PRECISION_HINT"] = chosen
    return props


_UNCONVERTED = re.compile(r"No conversion rule found for operations:\s*(.+)")


def read_openvino(path: Path) -> Any:
    """``openvino.Model`` read from an IR ``.xml`` or an ONNX file.

    :class:`InvalidModelConfig` for a missing or unreadable file, naming the operators
    OpenVINO cannot convert when that is why.
    """
    ov = _openvino()
    if not path.is_file():
        raise InvalidModelConfig(f"model file {path} does not exist")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise InvalidModelConfig(f"OpenVINO IR {path.name} has no weights file {path.stem}.bin")
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:
        text = str(exc)
        found = _UNCONVERTED.search(text)
        if found:
            raise InvalidModelConfig(
                f"OpenVINO cannot run {path.name}: no conversion for operator(s) "
                f"{found.group(1).strip()}"
            ) from None
        lines = [line for line in text.splitlines() if line.strip()]
        raise InvalidModelConfig(
            f"OpenVINO cannot read {path.name}: {lines[-1] if lines else type(exc).__name__}"
        ) from None


def _name(port: Any) -> str:
    names = sorted(port.get_names())
    return port.get_any_name() if not names else names[0]


def _spec(port: Any, kind: str) -> tuple[TensorSpec, bool]:
    type_name = port.get_element_type().get_type_name()
    if type_name not in _OV_TYPES:
        raise InvalidModelConfig(
            f"{kind} {_name(port)!r} has unsupported OpenVINO type {type_name}"
        )
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return TensorSpec(name=_name(port), datatype=_OV_TYPES[type_name], dims=()), True
    dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
    return TensorSpec(name=_name(port), datatype=_OV_TYPES[type_name], dims=dims), False


def describe_openvino(path: Path) -> BackendIO:
    """Inputs and outputs of an IR or ONNX file as OpenVINO reads it (-1: dynamic dims)."""
    model = read_openvino(path)
    unranked: set[str] = set()

    def specs(ports: Any, kind: str) -> tuple[TensorSpec, ...]:
        out = []
        for port in ports:
            spec, no_rank = _spec(port, kind)
            if no_rank:
                unranked.add(spec.name)
            out.append(spec)
        return tuple(out)

    return BackendIO(
        specs(model.inputs, "input"), specs(model.outputs, "output"), frozenset(unranked)
    )


def precision_name(compiled: Any) -> str:
    """The precision a compiled model computes in (``fp32``, ``bf16``, ``fp16``)."""
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except Exception:  # a device without the property computes in the model's types
        return "model"
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(name, name)


class OpenVinoBackend(Backend):
    """One compiled OpenVINO model with one infer request (instances are not shared)."""

    name = "openvino"
    inline_safe = True

    def __init__(self, config: ModelConfig, version_dir: Path, instance: int = 0) -> None:
        super().__init__(config, version_dir, instance)
        self.compiled: Any = None
        self.request: Any = None
        self._outputs: dict[str, Any] = {}

    @property
    def model_path(self) -> Path:
        return self.version_dir / (self.config.default_model_filename or "model.xml")

    def _load(self) -> None:
        ov = _openvino()
        props = compile_properties(self.config.parameters)
        kinds = {g.kind for g in self.config.instance_group}
        if "KIND_GPU" in kinds:
            raise InvalidModelConfig(
                f"model {self.config.name!r}: the openvino backend runs on the CPU only "
                "(instance_group kind KIND_GPU)"
            )
        model = read_openvino(self.model_path)
        try:
            self.compiled = ov.Core().compile_model(model, "CPU", props)
        except Exception as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise InvalidModelConfig(
                f"OpenVINO cannot compile {self.model_path.name} for the CPU: "
                f"{lines[-1] if lines else type(exc).__name__}"
            ) from None
        self.request = self.compiled.create_infer_request()
        self._outputs = {}
        for port in self.compiled.outputs:
            for name in port.get_names():
                self._outputs[name] = port
        devices = self.compiled.get_property("EXECUTION_DEVICES")
        self.precision = precision_name(self.compiled)
        self.providers = [f"openvino:{device}" for device in devices] or ["openvino:CPU"]
        wanted = props.get("INFERENCE_PRECISION_HINT")
        if wanted == "bf16" and self.precision != "bf16":
            self.fallback_warnings = [
                f"BF16 was hinted but this CPU computes in {self.precision} "
                "(no AVX512-BF16/AMX); the hint is a wish to OpenVINO, not an order"
            ]
            log.warning("model %s: %s", self.config.name, self.fallback_warnings[0])

    def _infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays:
        request = self.request
        if request is None:
            raise InternalError("openvino model is not loaded")
        missing = [name for name in outputs if name not in self._outputs]
        if missing:
            raise InternalError(f"openvino model has no output(s) {missing}")
        # share_outputs=False: the arrays are copies, not views of buffers the next run reuses.
        results = request.infer(dict(inputs), share_outputs=False)
        return {name: np.asarray(results[self._outputs[name]]) for name in outputs}

    def translate_error(self, exc: Exception) -> ForwardpassError:
        """A shape OpenVINO refuses is the batch's data; anything else, the model's fault."""
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if isinstance(exc, ValueError | TypeError):
            return InvalidArgument(f"openvino: {text}")
        return InternalError(f"openvino: {text[-600:]}")

    def unload(self) -> None:
        self.request = None
        self.compiled = None


#: How the optimizer names "run this file on OpenVINO's CPU device at this precision" in a
#: provider list (``openvino:CPU:bf16``): a name ONNX Runtime never uses.
SESSION_PREFIX = "openvino:"


class _Output:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class OpenVinoSession:
    """A compiled model with ONNX Runtime's ``run``/``get_outputs`` shape, for measuring.

    Compiled for latency the way a served instance with ``threads`` is: one stream,
    ``INFERENCE_NUM_THREADS`` threads, the given precision hint.
    """

    def __init__(self, path: Path, provider: str, threads: int) -> None:
        ov = _openvino()
        parts = provider[len(SESSION_PREFIX) :].split(":")
        device = parts[0] or "CPU"
        props: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if len(parts) > 1 and parts[1]:
            props["INFERENCE_PRECISION_HINT"] = _PRECISIONS.get(parts[1].lower(), parts[1])
        self.compiled = ov.Core().compile_model(read_openvino(path), device, props)
        self.precision = precision_name(self.compiled)
        self.request = self.compiled.create_infer_request()
        self._ports = {_name(p): p for p in self.compiled.outputs}

    def get_outputs(self) -> list[_Output]:
        return [_Output(name) for name in self._ports]

    def run(self, names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(dict(feed), share_outputs=False)
        return [np.asarray(results[self._ports[n]]) for n in (names or list(self._ports))]


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU device computes in BF16 on this machine (AVX512-BF16 or AMX)."""
    ov = _openvino()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
