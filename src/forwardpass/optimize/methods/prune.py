"""Pruning as an ``optimize`` method: fewer channels (faster) or more zeros (not faster).

Variants: structured pruning to 40 % and 60 % fewer FLOPs ranked by L1 norm, to 40 % ranked
by sensitivity, each fine-tuned by distillation from the original on the calibration inputs
(see :mod:`forwardpass.optimize.pruning`); and unstructured 50 % magnitude pruning, which is
measured and reported as what it is: zeros ONNX Runtime cannot exploit, no speed-up expected.
Needs torch (``pip install 'forwardpass[torch]'``) and a feed-forward CNN/MLP graph; a model
outside that is skipped with the operator named, and the other methods run on.
"""

from __future__ import annotations

from pathlib import Path

from forwardpass.errors import Unsupported
from forwardpass.optimize.feedforward import unsupported_ops
from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant

__all__ = ["PruneMethod"]


class PruneMethod(Method):
    """Structured channel/neuron pruning with a distillation fine-tune; unstructured zeros."""

    name = "prune"
    requires = ("torch",)
    extra = "torch"

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant(
                "prune-l1-40",
                "channels by L1 norm, −40% FLOPs, fine-tuned",
                {"score": "l1", "reduction": 0.4},
            ),
            Variant(
                "prune-sensitivity-40",
                "channels by sensitivity, −40% FLOPs, fine-tuned",
                {"score": "sensitivity", "reduction": 0.4},
            ),
            Variant(
                "prune-l1-60",
                "channels by L1 norm, −60% FLOPs, fine-tuned",
                {"score": "l1", "reduction": 0.6},
            ),
            Variant(
                "prune-unstructured-50",
                "50% smallest weights zeroed (no FLOPs saved)",
                {"sparsity": 0.5},
            ),
        )

    def check(self, ctx: BuildContext) -> str | None:
        reason = super().check(ctx)
        if reason:
            return reason
        missing = unsupported_ops(ctx.model)
        if missing:
            return f"unsupported op {', '.join(missing)} for pruning (feed-forward CNN/MLP only)"
        if len(ctx.config.inputs) != 1 or len(ctx.config.outputs) != 1:
            return "pruning takes a model with one input and one output"
        return None

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        from forwardpass.optimize.pruning import (
            PruneOptions,
            prune_structured,
            prune_unstructured,
        )

        if "sparsity" in variant.options:
            return prune_unstructured(ctx.model, output, variant.options["sparsity"]).notes()
        data = ctx.calibration
        if data is None or not data.real:
            raise MethodSkipped(
                "structured pruning fine-tunes on real inputs: give --calibration or --validation"
            )
        options = PruneOptions(variant.options["reduction"], variant.options["score"])
        try:
            result = prune_structured(
                ctx.model, output, data.arrays[ctx.config.inputs[0].name], data.labels, options
            )
        except Unsupported as exc:
            raise MethodSkipped(exc.message) from exc
        return result.notes()
