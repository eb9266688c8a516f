"""Optimization targets: where the optimized model will run, and the providers that serve it.

=========  ===============================================  ====================================
target     execution providers measured on                  what "best" means
=========  ===============================================  ====================================
cpu        CPUExecutionProvider                             lowest batch-1 p50 latency
cuda       CUDAExecutionProvider (+ CPU for unplaced ops)   lowest batch-1 p50 latency
tensorrt   TensorrtExecutionProvider, CUDA, CPU             lowest batch-1 p50 latency
openvino   the OpenVINO runtime's CPU device (candidates);  lowest batch-1 p50 latency
           the original on CPUExecutionProvider
edge       CPUExecutionProvider                             smallest file on disk; latency
                                                            breaks ties (within 5 %)
=========  ===============================================  ====================================

A target whose provider this onnxruntime build lacks is refused with the list of providers
that are present: measuring on the CPU and calling it CUDA would be a lie.

``openvino`` runs its candidates on the ``openvino`` runtime package when it is installed
(provider name ``openvino:CPU:<precision>``, see :mod:`forwardpass.runtime.openvino`), and
measures the original on ONNX Runtime's default CPU provider, so the gain reported is
OpenVINO's over what the model is served with today. Without the package, an onnxruntime build
with the OpenVINO execution provider (``onnxruntime-openvino``) serves instead.
"""

from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass

from forwardpass.errors import Unsupported

__all__ = ["OPENVINO_FP32", "Target", "TargetPlan", "plan_target"]


class Target(enum.Enum):
    """Where the optimized model is meant to run."""

    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"
    EDGE = "edge"


_PROVIDERS: dict[Target, tuple[str, ...]] = {
    Target.CPU: ("CPUExecutionProvider",),
    Target.EDGE: ("CPUExecutionProvider",),
    Target.CUDA: ("CUDAExecutionProvider", "CPUExecutionProvider"),
    Target.TENSORRT: (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ),
    Target.OPENVINO: ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
}

_INSTALL = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (and a CUDA-capable GPU with its driver)",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu with TensorRT libraries on the path",
    "OpenVINOExecutionProvider": "pip install 'forwardpass[openvino]' (the openvino runtime; "
    "or onnxruntime-openvino in a separate environment, since it replaces onnxruntime)",
}

#: The provider list that means "the OpenVINO runtime, CPU device, FP32".
OPENVINO_FP32 = ("openvino:CPU:f32",)


@dataclass(frozen=True, slots=True)
class TargetPlan:
    """The providers a target measures on, and every provider this build offers."""

    target: Target
    providers: tuple[str, ...]
    available: tuple[str, ...]
    #: Where the original is measured, when not on ``providers`` (``openvino``: ORT's CPU).
    baseline: tuple[str, ...] = ()

    @property
    def original(self) -> tuple[str, ...]:
        """The providers the original model is measured on."""
        return self.baseline or self.providers

    @property
    def gpu(self) -> bool:
        return self.target in (Target.CUDA, Target.TENSORRT)


def plan_target(target: Target, available: tuple[str, ...] | None = None) -> TargetPlan:
    """The providers for ``target``; :class:`Unsupported` naming what is missing and why."""
    if available is None:
        import onnxruntime

        available = tuple(onnxruntime.get_available_providers())
    if target is Target.OPENVINO and importlib.util.find_spec("openvino") is not None:
        return TargetPlan(target, OPENVINO_FP32, tuple(available), ("CPUExecutionProvider",))
    wanted = _PROVIDERS[target]
    missing = [p for p in wanted if p not in available]
    if missing and target is Target.OPENVINO:
        raise Unsupported(
            "target 'openvino' needs the OpenVINO runtime, which is not installed: pip install "
            "'forwardpass[openvino]' (or onnxruntime-openvino, in an environment of its own "
            "since it replaces onnxruntime; this one offers "
            f"{', '.join(available)}). Nothing was measured or written."
        )
    if missing:
        hints = "; ".join(f"{p}: {_INSTALL.get(p, 'not in this build')}" for p in missing)
        raise Unsupported(
            f"target {target.value!r} needs {', '.join(missing)}, which this onnxruntime build "
            f"does not offer (present: {', '.join(available)}). {hints}. Candidates are not "
            "measured on a substitute provider, since the numbers would not describe the target."
        )
    baseline = ("CPUExecutionProvider",) if target is Target.OPENVINO else ()
    return TargetPlan(target, wanted, tuple(available), baseline)
