"""Where an edge bundle will run: the CPU it is converted for, and the runtime it needs.

ONNX Runtime's converter offers two optimization styles. ``Fixed`` applies every optimization
before saving, baking in the target platform's kernels (NCHWc layouts on x86-64, int8 QDQ
handling on ARM): right when the CPU is known. ``Runtime`` applies the basic optimizations and
saves the others to be replayed at load (``session.enable_saved_runtime_optimizations``): right
when the CPU is not known, since the replay picks what that machine's build supports.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib.util import find_spec

from forwardpass.errors import Unsupported

__all__ = ["ANY", "TARGETS", "Target", "host_machine", "require_runtime"]


@dataclass(frozen=True, slots=True)
class Target:
    """One target CPU (or ``any``) and how a model is converted for it."""

    name: str
    #: ``Fixed`` or ``Runtime`` (the converter's OptimizationStyle names).
    optimization_style: str
    #: The converter's ``target_platform`` (``amd64``, ``arm``), None for an unknown CPU.
    converter_platform: str | None
    #: ``platform.machine()`` values of this CPU.
    machines: tuple[str, ...]
    #: The Python module that runs the bundle there, and how to install it.
    runtime_module: str = "onnxruntime"
    install: str = "pip install onnxruntime"

    @property
    def runtime_optimizations(self) -> bool:
        return self.optimization_style == "Runtime"


ANY = Target("any", "Runtime", None, ())
TARGETS: dict[str, Target] = {
    "x86_64": Target("x86_64", "Fixed", "amd64", ("x86_64", "amd64", "AMD64")),
    "arm64": Target("arm64", "Fixed", "arm", ("aarch64", "arm64", "ARM64")),
}


def host_machine() -> str:
    return platform.machine()


def require_runtime(target: Target) -> None:
    """Raise :class:`Unsupported` (with the install line) when the runtime the bundle is
    converted, checked and measured with is not installed here."""
    for module in (target.runtime_module, f"{target.runtime_module}.tools"):
        try:
            found = find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise Unsupported(
                f"an edge bundle for {target.name} needs {target.runtime_module} (its ORT-format "
                f"converter and the runtime the bundle is checked with), which is not installed "
                f"here: {target.install}"
            )
