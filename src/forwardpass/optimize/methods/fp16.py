"""Half precision: FP16 weights and arithmetic, inputs and outputs kept FP32.

FP16 uses onnxconverter-common's converter with ``keep_io_types=True`` (clients keep sending
FP32) and its default block list, extended below: ops whose FP16 versions are missing or
numerically poor stay FP32 behind Cast nodes. Weights below FP16's range are clamped, and the
report counts them.

BF16 pays off only where the hardware has BF16 arithmetic (GPUs from Ampere on, CPUs with
AMX/AVX512-BF16) *and* the provider has BF16 kernels; ONNX Runtime's CPU provider has almost
none, so on this target it is skipped with that reason rather than measured as a slow Cast
chain.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from forwardpass.optimize.methods.base import BuildContext, Method, MethodSkipped, Variant
from forwardpass.optimize.target import Target

__all__ = ["BF16Method", "FP16Method"]

#: Kept FP32 beyond the converter's own list: reductions and normalizations that overflow or
#: lose precision in FP16 and are cheap next to the matrix products around them.
_KEEP_FP32 = ("Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "Pow", "Sqrt", "Exp", "Log")


class FP16Method(Method):
    """Convert weights and arithmetic to FP16 with FP32 inputs and outputs."""

    name = "fp16"
    requires = ("onnxconverter_common",)

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (Variant("fp16", "FP16 weights and arithmetic, FP32 I/O, fragile ops FP32"),)

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        import onnx
        from onnxconverter_common import float16

        block = [*float16.DEFAULT_OP_BLOCK_LIST, *_KEEP_FP32]
        with warnings.catch_warnings(record=True) as caught:
            # The converter warns once per clamped weight; they are counted for the report.
            warnings.filterwarnings("always", message=".*will be truncated to.*")
            try:
                model = float16.convert_float_to_float16(
                    ctx.model, keep_io_types=True, op_block_list=block
                )
            except Exception as exc:  # the converter raises bare exceptions for odd graphs
                raise MethodSkipped(f"the FP16 converter cannot handle this model: {exc}") from exc
        was_float = {o.name for o in ctx.model.graph.output if o.type.tensor_type.elem_type == 1}
        aligned = _align_casts(model)
        fixed = _restore_float_outputs(model, was_float)
        onnx.save(model, str(output))
        notes = [f"kept FP32: {', '.join(sorted(set(_KEEP_FP32)))} and the converter's list"]
        clamped = sum(1 for w in caught if "truncated" in str(w.message))
        if clamped:
            notes.append(f"{clamped} weight value(s) outside FP16 range were clamped")
        if fixed:
            notes.append(f"cast output(s) {', '.join(fixed)} back to FP32")
        if aligned:
            notes.append(f"{aligned} Cast node(s) retargeted to the FP16 type the graph declares")
        return notes


def _align_casts(model: Any) -> int:
    """Make each Cast's target type agree with the type declared for its output.

    onnxconverter-common can rewrite a Cast's output declaration to FP16 while leaving the
    node's ``to`` at FP32 (a Cast from an integer mask in a transformer, for one), which
    ONNX Runtime then refuses to load. The declaration is what the converted consumers expect.
    """
    from onnx import TensorProto

    declared = {
        v.name: v.type.tensor_type.elem_type
        for v in (*model.graph.value_info, *model.graph.output)
        if v.type.HasField("tensor_type")
    }
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or not node.output:
            continue
        want = declared.get(node.output[0])
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i in floats and want in floats:
                if attribute.i != want:
                    attribute.i = want
                    changed += 1
    return changed


def _restore_float_outputs(model: Any, was_float: set[str]) -> list[str]:
    """Cast FP16 graph outputs back to FP32; the names of those fixed.

    onnxconverter-common 1.16 with ``keep_io_types`` still declares an output FP16 when the op
    producing it is blocked (kept FP32): it casts the FP32 result down. The server's config
    promises FP32, so the output is renamed and a final Cast restores the type.
    """
    from onnx import TensorProto, helper

    fixed = []
    for value in model.graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT16 or value.name not in was_float:
            continue
        inner = f"{value.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == value.name else o for o in node.output]
            node.input[:] = [inner if i == value.name else i for i in node.input]
        model.graph.node.append(
            helper.make_node(
                "Cast", [inner], [value.name], to=TensorProto.FLOAT, name=f"{inner}_cast"
            )
        )
        value.type.tensor_type.elem_type = TensorProto.FLOAT
        fixed.append(value.name)
    return fixed


class BF16Method(Method):
    """BF16, offered only where the target's provider computes in BF16."""

    name = "bf16"

    def variants(self, ctx: BuildContext) -> tuple[Variant, ...]:
        return (Variant("bf16", "BF16 arithmetic"),)

    def check(self, ctx: BuildContext) -> str | None:
        if ctx.target is Target.OPENVINO:
            return (
                "on --target openvino, BF16 is OpenVINO's precision hint: the candidate "
                "openvino-bf16 of method openvino"
            )
        if ctx.target in (Target.CPU, Target.EDGE):
            return (
                "ONNX Runtime's CPU provider has BF16 kernels for almost no ops, so a BF16 "
                "model would run as Casts around FP32 kernels; use fp16 or int8 here"
            )
        return (
            "BF16 conversion is not built yet: it needs a BF16-capable GPU to validate "
            "against, and this build was made without one"
        )

    def build(self, ctx: BuildContext, variant: Variant, output: Path) -> list[str]:
        raise MethodSkipped(self.check(ctx) or "not available")
