"""The optimization methods, by name; :func:`resolve_methods` turns ``--methods`` into them.

Structured pruning and distillation (they need torch) will be further :class:`Method`
subclasses with ``requires = ("torch",)`` and ``extra = "torch"``, added to :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Sequence

from forwardpass.errors import InvalidArgument
from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant
from forwardpass.optimize.methods.distill import DistillMethod
from forwardpass.optimize.methods.fp16 import BF16Method, FP16Method
from forwardpass.optimize.methods.graph import GraphMethod
from forwardpass.optimize.methods.int4 import Int4Method, Int8WeightMethod
from forwardpass.optimize.methods.int8 import Int8DynamicMethod, Int8StaticMethod
from forwardpass.optimize.methods.openvino import OpenVinoMethod
from forwardpass.optimize.methods.prune import PruneMethod  # registration hook: pruning
from forwardpass.optimize.target import Target

__all__ = [
    "DEFAULT_METHODS",
    "GENERATION_METHODS",
    "METHODS",
    "BuildContext",
    "Method",
    "MethodSkipped",
    "Variant",
    "resolve_methods",
]

#: Every method, in the order they run.
METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        GraphMethod,
        FP16Method,
        BF16Method,
        Int8DynamicMethod,
        Int8StaticMethod,
        Int4Method,
        Int8WeightMethod,
        OpenVinoMethod,
        PruneMethod,  # registration hook: pruning (torch extra; trains, so opt-in)
        DistillMethod,  # sentence encoders: a shallower student (torch extra; trains, opt-in)
    )
}
# Pruning fine-tunes a network: it runs only when --methods names it. OpenVINO builds for
# --target openvino, and is that target's default (the ONNX methods' files would otherwise be
# timed on OpenVINO too, which --methods may still ask for). INT8 weight-only is for
# generation models (their default set); others get it when --methods names it.
DEFAULT_METHODS = tuple(
    n
    for n in METHODS
    if n not in (PruneMethod.name, DistillMethod.name, OpenVinoMethod.name, Int8WeightMethod.name)
)
OPENVINO_METHODS = (OpenVinoMethod.name,)
#: What a generation model (config parameter ``generation``) tries by default.
GENERATION_METHODS = (Int8WeightMethod.name, Int4Method.name)


def resolve_methods(
    names: Sequence[str] | None,
    target: Target | None = None,
    default: Sequence[str] | None = None,
) -> list[Method]:
    """Instances of the named methods, in :data:`METHODS` order; for ``None``, ``default``, or
    the target's defaults."""
    if default is None:
        default = OPENVINO_METHODS if target is Target.OPENVINO else DEFAULT_METHODS
    wanted = list(default if names is None else names)
    unknown = [n for n in wanted if n not in METHODS]
    if unknown:
        raise InvalidArgument(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return [cls() for name, cls in METHODS.items() if name in wanted]
