"""Pruning as an ``optimize`` method: fewer channels (faster) or more zeros (not faster).

Variants: structured pruning to 40 % and 60 % fewer FLOPs ranked by L1 norm, to 40 % ranked
by sensitivity, to 40 % on the expansion layers of inverted-residual blocks only (ranked by
activation, projections re-fitted by least squares; skipped where there are none), each
fine-tuned by distillation from the original on the calibration inputs (see
:mod:`forwardpass.optimize.pruning`); and unstructured 50 % magnitude pruning, which is
measured and reported as what it is: zeros ONNX Runtime cannot exploit, no speed-up expected.
Needs torch (``pip install 'forwardpass[torch]'``) and a feed-forward CNN/MLP graph; a model
outside that is skipped with the operator named, and the other methods run on.
"""

from __future__ import annotations

from pathlib import Path

from forwardpass.errors import Unsupported
from forwardpass.optimize.feedforward import fold_shapes, unsupported_ops
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
                "prune-expansion-40",
                "inverted-residual expansions by activation, −40% FLOPs, least-squares re-fit "
                "of the projections, fine-tuned",
                {"score": "activation", "reduction": 0.4, "layers": "expansion"},
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
        missing = unsupported_ops(fold_shapes(ctx.model))  # computed padding folds away
        if missing:
            return f"unsupported op {', '.join(missing)} for pruning (feed-forward CNN/MLP only)"
        if len(ctx.config.inputs) != 1 or len(ctx.config.outputs) != 1:
            return "pruning takes a model with one input and one output"
        return None

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        from dataclasses import replace

        from forwardpass.optimize.pruning import (
            PruneOptions,
            prune_structured,
            prune_unstructured,
        )
        from forwardpass.optimize.training import FitSettings

        if "sparsity" in variant.options:
            return prune_unstructured(ctx.model, output, variant.options["sparsity"]).notes()
        data = ctx.calibration
        if data is None or not data.real:
            raise MethodSkipped(
                "structured pruning fine-tunes on real inputs: give --calibration or --validation"
            )
        layers = variant.options.get("layers", "all")
        options = PruneOptions(
            variant.options["reduction"],
            variant.options["score"],
            layers=layers,
            # Networks of expansions (MobileNet/EfficientNet) collapse when cut raw: re-fit
            # each projection by least squares before the fine-tune.
            reconstruct_samples=96 if layers == "expansion" else 0,
        )
        if layers == "expansion":  # image-sized networks: a bounded, gentle fine-tune
            options = replace(
                options, fit=FitSettings(epochs=3, max_steps=20, batch_size=16, learning_rate=1e-4)
            )
        try:
            result = prune_structured(
                ctx.model, output, data.arrays[ctx.config.inputs[0].name], data.labels, options
            )
        except Unsupported as exc:
            raise MethodSkipped(exc.message) from exc
        return result.notes()
