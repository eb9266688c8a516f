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

__all__ = ["Int4Method", "Int8WeightMethod", "fold_weight_transposes", "matmul_weight_share"]

#: MatMul weights must hold at least this share of the parameters for INT4 to be tried.
MIN_MATMUL_SHARE = 0.5
#: ``MatMulNBits`` quantizes along K in blocks; smaller K gives no gain.
MIN_K = 32


def _transposed_weights(model: Any) -> dict[str, str]:
    """``Transpose`` outputs that are a 2-D initializer transposed: output → initializer.

    Exporters often write ``x @ W.T`` as ``MatMul(x, Transpose(W))``; onnxruntime folds that
    at load, but the quantizer sees no constant MatMul weight unless it is folded first."""
    dims = {init.name: len(init.dims) for init in model.graph.initializer}
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Transpose" or dims.get(node.input[0]) != 2:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if perm == [1, 0]:
            found[node.output[0]] = node.input[0]
    return found


def fold_weight_transposes(model: Any) -> int:
    """Replace every ``Transpose`` of a 2-D initializer by the transposed initializer (in
    place); initializers nothing reads any more are dropped. Returns how many were folded."""
    from onnx import numpy_helper

    folded = _transposed_weights(model)
    if not folded:
        return 0
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    keep = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in folded)]
    for output, name in folded.items():
        array = np.ascontiguousarray(numpy_helper.to_array(inits[name]).T)
        graph.initializer.append(numpy_helper.from_array(array, output))
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    remaining = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    return len(folded)


def matmul_weight_share(model: Any) -> tuple[int, int]:
    """(parameters in constant 2-D MatMul weights with K ≥ 32, all parameters); a weight
    behind a ``Transpose`` counts (the build folds it)."""
    sizes = {
        init.name: (tuple(init.dims), int(np.prod(init.dims))) for init in model.graph.initializer
    }
    total = sum(n for _, n in sizes.values())
    transposed = _transposed_weights(model)
    matmul = 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = node.input[1]
        if weight in sizes:
            dims, count = sizes[weight]
        elif weight in transposed:
            dims, count = sizes[transposed[weight]]
            dims = dims[::-1]
        else:
            continue
        if len(dims) == 2 and dims[0] >= MIN_K:
            matmul += count
    return matmul, total


def _generation(ctx: BuildContext) -> bool:
    return "generation" in ctx.config.parameters


class Int4Method(Method):
    """4-bit blockwise weight-only quantization of MatMul weights."""

    name = "int4"
    requires = ("onnx_ir",)
    bits = 4

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        if _generation(ctx):
            # Decode steps are one row per sequence: int8 compute (accuracy level 4) is what
            # makes MatMulNBits faster than FP32 there. Asymmetric blocks of 32 are the grid
            # of a Q4_1 GGUF's weights, so they requantize them almost exactly.
            return (
                Variant(
                    "int4-b32-asym",
                    "INT4 weight-only MatMulNBits, block 32, asymmetric, int8 compute",
                    {"block": 32, "symmetric": False, "accuracy_level": 4},
                ),
                Variant(
                    "int4-b32",
                    "INT4 weight-only MatMulNBits, block 32, symmetric, int8 compute",
                    {"block": 32, "accuracy_level": 4},
                ),
            )
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
        symmetric = bool(variant.options.get("symmetric", True))
        level = variant.options.get("accuracy_level")
        model = onnx.ModelProto.FromString(ctx.model.SerializeToString())
        folded = fold_weight_transposes(model)
        config = DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=symmetric, bits=self.bits, accuracy_level=level
        )
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=self.bits,
            block_size=block,
            is_symmetric=symmetric,
            accuracy_level=level,
            algo_config=config,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(output))
        quantized = sum(1 for n in onnx.load(str(output)).graph.node if n.op_type == "MatMulNBits")
        if quantized == 0:
            raise MethodSkipped(f"no MatMul weight fits {self.bits}-bit blocks of {block}")
        notes = [f"{quantized} MatMul node(s) quantized to {self.bits} bits"]
        if folded:
            notes.append(f"{folded} transposed weight(s) folded into constants first")
        return notes


class Int8WeightMethod(Int4Method):
    """8-bit blockwise weight-only quantization of MatMul weights (``MatMulNBits`` bits 8):
    half the FP32 weights' bytes read per step again, at far less error than 4 bits. Used
    by default for generation models, whose decode steps are bound by reading weights."""

    name = "int8-weight"
    bits = 8

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (
            Variant(
                "int8w-b32",
                "INT8 weight-only MatMulNBits, block 32, symmetric, int8 compute",
                {"block": 32, "accuracy_level": 4},
            ),
        )
