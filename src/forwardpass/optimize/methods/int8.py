"""INT8 quantization with ONNX Runtime's quantizer: dynamic, and static (QDQ) calibrated.

Dynamic quantization stores INT8 weights and quantizes activations on the fly per batch; it
needs no data and suits MatMul-heavy models (transformers). Static QDQ fixes activation scales
from calibration data (min/max over real inputs) and suits conv nets; the variants cover the
choices that decide accuracy on real models: per-channel or per-tensor weights, signed
symmetric or unsigned asymmetric activations. Which one wins depends on the model, so all are
measured (see MODELS.md: dynamic made a conv net 8–12× slower; static per-channel s8/s8 was
1.3× faster).

The model is first run through ``quant_pre_process`` (shape inference and graph cleanup, as
ONNX Runtime recommends before quantizing); when that fails the raw model is used and the
report says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant

__all__ = ["Int8DynamicMethod", "Int8StaticMethod", "preprocessed"]

log = logging.getLogger("forwardpass.optimize")

_CALIBRATION_BATCH = 16


def preprocessed(ctx: BuildContext) -> tuple[Path, list[str]]:
    """The source after ``quant_pre_process``, made once per run; notes when it fell back."""
    target = ctx.workdir / "quant-preprocessed.onnx"
    failed = ctx.workdir / "quant-preprocessed.failed"
    if target.exists():
        return target, []
    if failed.exists():
        return ctx.source, [failed.read_text(encoding="utf-8")]
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(ctx.source), str(target))
    except Exception as exc:  # symbolic shape inference rejects some graphs; quantize raw
        note = f"quantization pre-processing failed ({exc}); quantized the model as it is"
        failed.write_text(note, encoding="utf-8")
        target.unlink(missing_ok=True)
        return ctx.source, [note]
    return target, []


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over :class:`Samples` batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = batches
        self._iter: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def _quiet_root() -> logging.Filter:
    """Drops the quantizer's root-logger chatter while it runs.

    onnxruntime.quantization logs advice ("please pre-process": it was, or could not be) and
    one line per skipped per-channel axis (LayerNorm weights of a transformer: dozens) on the
    root logger; errors still pass.
    """

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.ERROR

    return _Drop()


class Int8DynamicMethod(Method):
    """INT8 weights, activations quantized per batch at run time."""

    name = "int8-dynamic"

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant("int8-dynamic-pc", "dynamic INT8, per-channel weights", {"per_channel": True}),
            Variant("int8-dynamic", "dynamic INT8, per-tensor weights", {"per_channel": False}),
        )

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source, notes = preprocessed(ctx)
        drop = _quiet_root()
        logging.getLogger().addFilter(drop)
        try:
            quantize_dynamic(
                str(source),
                str(output),
                per_channel=bool(variant.options["per_channel"]),
                weight_type=QuantType.QInt8,
            )
        finally:
            logging.getLogger().removeFilter(drop)
        return notes


class Int8StaticMethod(Method):
    """INT8 QDQ with activation ranges calibrated on real inputs."""

    name = "int8-static"

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant(
                "int8-static-s8s8-pc",
                "static QDQ, per-channel, symmetric s8 activations and weights",
                {"per_channel": True, "activation": "s8", "symmetric": True},
            ),
            Variant(
                "int8-static-u8s8-pc",
                "static QDQ, per-channel, asymmetric u8 activations, s8 weights",
                {"per_channel": True, "activation": "u8", "symmetric": False},
            ),
            Variant(
                "int8-static-s8s8",
                "static QDQ, per-tensor, symmetric s8 activations and weights",
                {"per_channel": False, "activation": "s8", "symmetric": True},
            ),
        )

    def check(self, ctx: BuildContext) -> str | None:
        if ctx.calibration is None or not ctx.calibration.real:
            return (
                "no calibration data: static quantization fixes activation ranges from real "
                "inputs (give --calibration DIR, --validation DATA, or a request log); random "
                "inputs would calibrate the wrong ranges"
            )
        return super().check(ctx)

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        calibration = ctx.calibration
        if calibration is None or len(calibration) == 0:
            raise MethodSkipped("no calibration data")
        size = _CALIBRATION_BATCH if ctx.config.batching else 1
        if ctx.config.batching:
            batches = list(calibration.batches(size))
        else:
            batches = [
                {k: v[i] for k, v in calibration.arrays.items()} for i in range(len(calibration))
            ]
        source, notes = preprocessed(ctx)
        signed = variant.options["activation"] == "s8"
        drop = _quiet_root()
        logging.getLogger().addFilter(drop)
        try:
            quantize_static(
                str(source),
                str(output),
                _Reader(batches),  # duck-typed CalibrationDataReader (its __subclasshook__)
                quant_format=QuantFormat.QDQ,
                per_channel=bool(variant.options["per_channel"]),
                activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={
                    "ActivationSymmetric": bool(variant.options["symmetric"]),
                    "WeightSymmetric": True,
                },
            )
        finally:
            logging.getLogger().removeFilter(drop)
        notes.append(f"calibrated on {len(calibration)} sample(s) from {calibration.source}")
        return notes
