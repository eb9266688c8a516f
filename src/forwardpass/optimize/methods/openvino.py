"""OpenVINO: the model converted to OpenVINO IR and compiled for the CPU, in FP32 and BF16.

Each variant converts the source ONNX file with OpenVINO (``model.xml`` + ``model.bin``, FP32
weights: ``save_model`` would otherwise halve them to FP16) and is measured on the OpenVINO
runtime at its precision hint, against the original on ONNX Runtime's CPU provider.

BF16 is offered only where OpenVINO's CPU device computes in it (AVX512-BF16 or AMX: the
``BF16`` optimization capability). Elsewhere OpenVINO takes the hint and computes in FP32, so
the candidate is skipped with that reason rather than measured as FP32 under a BF16 name.
A model with operators OpenVINO cannot convert is skipped with the operators named.
"""

from __future__ import annotations

from pathlib import Path

from forwardpass.errors import InvalidModelConfig
from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant
from forwardpass.optimize.target import Target

__all__ = ["OpenVinoMethod"]


class OpenVinoMethod(Method):
    """Convert to OpenVINO IR; run at an FP32 or a BF16 precision hint."""

    name = "openvino"
    requires = ("openvino",)
    extra = "openvino"
    filename = "model.xml"

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant(
                "openvino-fp32",
                "OpenVINO IR on the CPU device, FP32",
                {"precision": "f32"},
            ),
            Variant(
                "openvino-bf16",
                "OpenVINO IR on the CPU device, INFERENCE_PRECISION_HINT bf16",
                {"precision": "bf16"},
            ),
        )

    def check(self, ctx: BuildContext) -> str | None:
        if ctx.target is not Target.OPENVINO:
            return "builds for --target openvino only (its candidates run on OpenVINO)"
        return super().check(ctx)

    def providers(self, ctx: BuildContext, variant: Variant) -> tuple[str, ...]:
        return (f"openvino:CPU:{variant.options['precision']}",)

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        import openvino as ov

        from forwardpass.runtime.openvino import cpu_has_bf16, read_openvino

        if variant.options["precision"] == "bf16" and not cpu_has_bf16():
            capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            raise MethodSkipped(
                "this CPU has no BF16 arithmetic (OpenVINO's CPU capabilities: "
                f"{', '.join(capabilities)}; BF16 needs AVX512-BF16 or AMX), so OpenVINO "
                "would compute in FP32 under the BF16 hint"
            )
        try:
            model = read_openvino(ctx.source)
        except InvalidModelConfig as exc:
            raise MethodSkipped(exc.message) from None
        ov.save_model(model, str(output), compress_to_fp16=False)
        return [
            f"converted by OpenVINO {ov.get_version().split('-')[0]} to IR "
            f"({output.name} + {output.with_suffix('.bin').name}, FP32 weights); "
            f"served with backend openvino, INFERENCE_PRECISION_HINT "
            f"{variant.options['precision']}"
        ]
