"""INT4 weight-only quantization of MatMul weights (ONNX Runtime's ``MatMulNBits``).

Weights are stored as 4-bit blocks with one FP scale per block; activations stay FP32, and the
contrib op dequantizes on the fly. It pays off for large MatMul-heavy models (transformers,
big MLPs) whose time goes to reading weights; a conv net or a model of ``Gemm`` nodes has
nothing for it to quantize, and is skipped with that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant

__all__ = ["Int4Method", "matmul_weight_share"]

#: MatMul weights must hold at least this share of the parameters for INT4 to be tried.
MIN_MATMUL_SHARE = 0.5
#: ``MatMulNBits`` quantizes along K in blocks; smaller K gives no gain.
MIN_K = 32


def matmul_weight_share(model: Any) -> tuple[int, int]:
    """(parameters in constant 2-D MatMul weights with K ≥ 32, all parameters)."""
    sizes = {
        init.name: (tuple(init.dims), int(np.prod(init.dims))) for init in model.graph.initializer
    }
    total = sum(n for _, n in sizes.values())
    matmul = 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in sizes:
            dims, count = sizes[node.input[1]]
            if len(dims) == 2 and dims[0] >= MIN_K:
                matmul += count
    return matmul, total


class Int4Method(Method):
    """4-bit blockwise weight-only quantization of MatMul weights."""

    name = "int4"
    requires = ("onnx_ir",)

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant("int4-b32", "INT4 weight-only MatMulNBits, block 32, symmetric", {"block": 32}),
            Variant(
                "int4-b128", "INT4 weight-only MatMulNBits, block 128, symmetric", {"block": 128}
            ),
        )

    def check(self, ctx: BuildContext) -> str | None:
        matmul, total = matmul_weight_share(ctx.model)
        if total == 0 or matmul / total < MIN_MATMUL_SHARE:
            share = 0.0 if total == 0 else matmul / total
            return (
                f"INT4 weight-only quantizes constant MatMul weights, which hold {share:.0%} of "
                f"this model's {total:,} parameters (it needs ≥ {MIN_MATMUL_SHARE:.0%}; Conv and "
                "Gemm weights are not quantized by MatMulNBits)"
            )
        return super().check(ctx)

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        import onnx

        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                DefaultWeightOnlyQuantConfig,
                MatMulNBitsQuantizer,
            )
        except ImportError as exc:
            raise MethodSkipped(f"this onnxruntime has no 4-bit MatMul quantizer ({exc})") from exc
        block = int(variant.options["block"])
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True)
        quantizer = MatMulNBitsQuantizer(
            onnx.ModelProto.FromString(ctx.model.SerializeToString()),
            block_size=block,
            is_symmetric=True,
            algo_config=config,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(output))
        quantized = sum(1 for n in onnx.load(str(output)).graph.node if n.op_type == "MatMulNBits")
        if quantized == 0:
            raise MethodSkipped(f"no MatMul weight fits 4-bit blocks of {block}")
        return [f"{quantized} MatMul node(s) quantized to 4 bits"]
