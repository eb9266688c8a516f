"""Graph optimization: the same arithmetic, fewer and fused nodes.

``graph-ort`` saves ONNX Runtime's own offline-optimized model at ``ORT_ENABLE_EXTENDED``
(constant folding, redundant-node removal, fusions into ``com.microsoft`` contrib ops). The
layout-dependent ``ORT_ENABLE_ALL`` is avoided: its output is tied to the machine that made it.
``graph-onnxsim`` runs onnx-simplifier (constant folding and shape simplification in plain ONNX
ops, so any runtime can load the result), when it is installed.
"""

from __future__ import annotations

from pathlib import Path

from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant

__all__ = ["GraphMethod"]


class GraphMethod(Method):
    """ONNX Runtime's offline graph optimizations, and onnx-simplifier when present."""

    name = "graph"

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant("graph-ort", "ONNX Runtime offline graph optimization (ORT_ENABLE_EXTENDED)"),
            Variant("graph-onnxsim", "onnx-simplifier constant folding", {"onnxsim": True}),
        )

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        if variant.options.get("onnxsim"):
            return _simplify(ctx, output)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(output)
        # The CPU provider's fusions: a file made for CUDA would hold CUDA-only kernels.
        ort.InferenceSession(str(ctx.source), options, providers=["CPUExecutionProvider"])
        return ["fused nodes may be com.microsoft contrib ops: ONNX Runtime only"]


def _simplify(ctx: BuildContext, output: Path) -> list[str]:
    try:
        import onnxsim
    except ImportError:
        raise MethodSkipped(
            "onnx-simplifier is not installed (pip install 'forwardpass[optimize]')"
        ) from None
    import onnx

    model, ok = onnxsim.simplify(ctx.model)
    if not ok:
        raise MethodSkipped("onnx-simplifier could not verify its simplified model")
    before, after = len(ctx.model.graph.node), len(model.graph.node)
    onnx.save(model, str(output))
    return [f"{before} → {after} nodes"]
