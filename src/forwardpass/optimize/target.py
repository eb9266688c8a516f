"""Optimization targets: where the optimized model will run, and the providers that serve it.

=========  ===============================================  ====================================
target     execution providers measured on                  what "best" means
=========  ===============================================  ====================================
cpu        CPUExecutionProvider                             lowest batch-1 p50 latency
cuda       CUDAExecutionProvider (+ CPU for unplaced ops)   lowest batch-1 p50 latency
tensorrt   TensorrtExecutionProvider, CUDA, CPU             lowest batch-1 p50 latency
openvino   OpenVINOExecutionProvider, CPU                   lowest batch-1 p50 latency
edge       CPUExecutionProvider                             smallest file on disk; latency
                                                            breaks ties (within 5 %)
=========  ===============================================  ====================================

A target whose provider this onnxruntime build lacks is refused with the list of providers
that are present: measuring on the CPU and calling it CUDA would be a lie.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from forwardpass.errors import Unsupported

__all__ = ["Target", "TargetPlan", "plan_target"]


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
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino",
}


@dataclass(frozen=True, slots=True)
class TargetPlan:
    """The providers a target measures on, and every provider this build offers."""

    target: Target
    providers: tuple[str, ...]
    available: tuple[str, ...]

    @property
    def gpu(self) -> bool:
        return self.target in (Target.CUDA, Target.TENSORRT)


def plan_target(target: Target, available: tuple[str, ...] | None = None) -> TargetPlan:
    """The providers for ``target``; :class:`Unsupported` naming what is missing and why."""
    if available is None:
        import onnxruntime

        available = tuple(onnxruntime.get_available_providers())
    wanted = _PROVIDERS[target]
    missing = [p for p in wanted if p not in available]
    if missing:
        hints = "; ".join(f"{p}: {_INSTALL.get(p, 'not in this build')}" for p in missing)
        raise Unsupported(
            f"target {target.value!r} needs {', '.join(missing)}, which this onnxruntime build "
            f"does not offer (present: {', '.join(available)}). {hints}. Candidates are not "
            "measured on a substitute provider, since the numbers would not describe the target."
        )
    return TargetPlan(target, wanted, tuple(available))
