"""One candidate of an optimization run: what was built, and what it measured.

The original model is always the first candidate (method ``original``), measured like the
others, so every comparison is made on the same machine in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forwardpass.optimize.accuracy import Accuracy
from forwardpass.optimize.measure import Performance

__all__ = ["ORIGINAL", "CandidateResult", "count_parameters", "io_mismatch", "model_size"]

ORIGINAL = "original"

Status = Literal["measured", "skipped", "failed"]


@dataclass(slots=True)
class CandidateResult:
    """A candidate's outcome: measured (with numbers), skipped or failed (with the reason)."""

    name: str
    method: str
    description: str
    status: Status = "measured"
    reason: str = ""
    path: Path | None = None
    size_bytes: int | None = None
    parameters: int | None = None
    performance: Performance | None = None
    accuracy: Accuracy | None = None
    within_budget: bool | None = None
    notes: list[str] = field(default_factory=list)
    #: Where it was run and timed (ORT providers, or ``openvino:CPU:<precision>``).
    providers: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        return self.status == "measured" and self.performance is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "description": self.description,
            "status": self.status,
            "reason": self.reason,
            "size_bytes": self.size_bytes,
            "parameters": self.parameters,
            "performance": self.performance.to_dict() if self.performance else None,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "within_budget": self.within_budget,
            "notes": list(self.notes),
            "providers": list(self.providers),
        }


def model_size(path: Path) -> int:
    """Bytes on disk: the file, and for OpenVINO IR (``.xml``) its ``.bin`` weights too."""
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size


def _describe(path: Path) -> Any:
    if path.suffix == ".xml":
        from forwardpass.runtime.openvino import describe_openvino

        return describe_openvino(path)
    from forwardpass.runtime.onnx import describe_onnx

    return describe_onnx(path)


def _count_openvino(path: Path) -> int:
    from forwardpass.runtime.openvino import read_openvino

    total = 0
    for op in read_openvino(path).get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type().is_real():
            total += int(np.prod(list(op.get_output_shape(0)))) if op.get_output_shape(0) else 1
    return total


def count_parameters(path: Path) -> int:
    """Weights in the file: initializer elements, packed 4-bit weights counted as K×N
    (for OpenVINO IR: the elements of its floating-point constants)."""
    if path.suffix == ".xml":
        return _count_openvino(path)
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    packed: set[str] = set()
    total = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            attrs = {a.name: a.i for a in node.attribute}
            packed.add(node.input[1])
            total += int(attrs.get("K", 0)) * int(attrs.get("N", 0))
    for init in model.graph.initializer:
        if init.name not in packed:
            total += int(np.prod(init.dims)) if len(init.dims) else 1
    return total


def io_mismatch(original: Path, candidate: Path) -> str | None:
    """Why ``candidate`` cannot be a version beside ``original`` (different I/O), or None.

    Every version of a model shares one config, so names, types and shapes must not change.
    """

    def compatible(x: tuple[int, ...], y: tuple[int, ...]) -> bool:
        # Shape inference may pin a dimension the original left symbolic ([-1, -1] becomes
        # [-1, 384]); the shared config still holds as long as no known sizes disagree.
        return len(x) == len(y) and all(p == q or -1 in (p, q) for p, q in zip(x, y, strict=True))

    a, b = _describe(original), _describe(candidate)
    for kind, left, right in (("input", a.inputs, b.inputs), ("output", a.outputs, b.outputs)):
        mine = {s.name: s for s in left}
        theirs = {s.name: s for s in right}
        if mine.keys() != theirs.keys() or any(
            mine[n].datatype is not theirs[n].datatype
            or not compatible(mine[n].dims, theirs[n].dims)
            for n in mine
        ):
            return (
                f"its {kind}s differ from the original's ("
                + ", ".join(f"{s.name}:{s.datatype.value}{list(s.dims)}" for s in right)
                + "); versions of a model share one config"
            )
    return None
