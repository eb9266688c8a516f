"""Pruning as an ``optimize`` method: fewer channels (faster) or more zeros (not faster).

Variants: structured pruning to 40 % and 60 % fewer FLOPs ranked by L1 norm, to 40 % ranked
by sensitivity, to 40 % on the expansion layers of inverted-residual blocks only (ranked by
activation, projections re-fitted by least squares; skipped where there are none), to a
predicted 1.45× at batch 1 on one thread (measured: ≥ 1.3× on the wall clock) with the cut of
each layer chosen by its measured sensitivity per unit of ONNX Runtime kernel time
(:mod:`forwardpass.optimize.allocation`) and each changed block then trained alone to give the
original block's outputs (:mod:`forwardpass.optimize.blocks`), alone and chained with static
INT8, each fine-tuned by distillation from the original on the
calibration inputs (see :mod:`forwardpass.optimize.pruning`); and unstructured 50 % magnitude
pruning, which is
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

#: The kernel-time model leaves out the time between kernels, which does not shrink: ask it
#: for more than the 1.3× wanted on the wall clock. On EfficientNet-Lite0 1.45 gave −32 % FLOPs
#: and 1.40–1.42× (wall, batch 1, one thread), where 1.35 gave −26 % and 1.32× (bench/README.md).
_SPEEDUP = 1.45
#: Views the latency variants run the sensitivity trials on, and re-fit on.
_SENSITIVITY_VIEWS = 64
_RECONSTRUCT_VIEWS = 96
#: Their least-squares ridge: on EfficientNet-Lite0, 0.05 kept 53 % top-1 agreement on
#: held-out photos where 1e-3 (fitting the training photos closer) kept 34 % (bench/README.md).
_RIDGE = 0.05
#: Block-wise reconstruction of the latency variants (:mod:`forwardpass.optimize.blocks`):
#: Adam steps per changed block, on the calibration inputs. On EfficientNet-Lite0 300 steps at
#: 5e-4 did as well as 500 at 2e-3 (bench/README.md), in half the time.
_BLOCK_STEPS = 300
_BLOCK_LEARNING_RATE = 5e-4
#: Share of the calibration inputs the latency variants' fine-tune is judged on (never trained
#: on; it keeps its best state there: on EfficientNet-Lite0 every step of an end-to-end
#: fine-tune lowered agreement, so this usually keeps the block-wise student as it is).
_VALIDATION_SHARE = 0.125


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
                "prune-latency-130",
                "channels where they cost least agreement per unit of measured kernel time, "
                "to ≥ 1.3× at batch 1 on one thread; least-squares re-fit, block-wise "
                "reconstruction, fine-tuned",
                {"score": "activation", "speedup": _SPEEDUP},
            ),
            Variant(
                "prune-latency-130-int8",
                "prune-latency-130, then static INT8 (QDQ, per-channel, s8/s8)",
                {"score": "activation", "speedup": _SPEEDUP, "int8": True},
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

        from forwardpass.optimize.blocks import BlockSettings
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
        speedup = float(variant.options.get("speedup", 0.0))
        options = PruneOptions(
            variant.options.get("reduction", 0.4),
            variant.options["score"],
            layers=layers,
            # Networks of expansions (MobileNet/EfficientNet) collapse when cut raw: re-fit
            # each projection by least squares before the fine-tune.
            reconstruct_samples=_RECONSTRUCT_VIEWS if layers == "expansion" or speedup else 0,
            speedup=speedup,
            sensitivity_samples=_SENSITIVITY_VIEWS,
            ridge=_RIDGE if speedup else 1e-3,
            block_samples=len(data) if speedup else 0,
            blocks=BlockSettings(steps=_BLOCK_STEPS, learning_rate=_BLOCK_LEARNING_RATE),
        )
        if layers == "expansion" or speedup:  # image-sized networks: a bounded, gentle fine-tune
            options = replace(
                options, fit=FitSettings(epochs=3, max_steps=20, batch_size=16, learning_rate=1e-4)
            )
        pruned = output.with_name("pruned.onnx") if variant.options.get("int8") else output
        inputs, labels = data.arrays[ctx.config.inputs[0].name], data.labels
        validation = None
        aside = int(len(inputs) * _VALIDATION_SHARE)
        if speedup and aside >= 4:
            validation, inputs = inputs[-aside:], inputs[:-aside]
            labels = None if labels is None else labels[:-aside]
            options = replace(
                options,
                block_samples=len(inputs),
                fit=replace(options.fit, validate_every=5),
            )
        try:
            result = prune_structured(ctx.model, pruned, inputs, labels, options, validation)
        except Unsupported as exc:
            raise MethodSkipped(exc.message) from exc
        notes = result.notes()
        if variant.options.get("int8"):
            notes += _quantized(ctx, pruned, output)
        return notes


def _quantized(ctx: BuildContext, pruned: Path, output: Path) -> list[str]:
    """``pruned`` quantized by the INT8 static method's per-channel s8/s8 variant."""
    from dataclasses import replace

    from forwardpass.optimize.methods.int8 import Int8StaticMethod

    method = Int8StaticMethod()
    variant = next(v for v in method.variants(ctx) if v.name == "int8-static-s8s8-pc")
    workdir = output.parent / "int8"
    workdir.mkdir(exist_ok=True)
    chained = replace(ctx, source=pruned, workdir=workdir, _model=None)
    return [f"then static INT8: {variant.description}", *method.build(chained, variant, output)]
