"""What the torch-based methods (pruning, distillation) can read, told without torch.

:data:`SUPPORTED_OPS` are the ONNX operators :mod:`.torch_graph` turns into torch: those of
feed-forward CNNs and MLPs. :func:`unsupported_ops` names the others a model uses, so a method
can say in one sentence why it skips a model before it imports torch. :func:`count_flops`
counts the multiply-accumulates of every Conv, Gemm and MatMul from the shapes ONNX shape
inference gives (per sample: a symbolic batch dimension counts as 1); FLOPs are twice that.
Element-wise work (activations, pooling, bias adds) is left out on purpose: it is small, and it
is not what pruning removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = [
    "SHAPE_OPS",
    "SUPPORTED_OPS",
    "FlopCount",
    "count_flops",
    "fold_shapes",
    "unsupported_ops",
]

#: Operators of shape arithmetic (TF-style "same" padding computed from ``Shape``, a
#: ``view(batch, -1)``) that :func:`fold_shapes` turns into constants.
SHAPE_OPS = frozenset(
    {
        "Shape",
        "Gather",
        "Slice",
        "Concat",
        "Cast",
        "ConstantOfShape",
        "Unsqueeze",
        "Squeeze",
        "Transpose",
        "Range",
        "Equal",
        "Where",
        "Expand",
        "Floor",
        "Ceil",
        "Max",
        "Min",
    }
)

#: ONNX operators the torch converter understands.
SUPPORTED_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Clip",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Flatten",
        "Reshape",
        "BatchNormalization",
        "Softmax",
        "LogSoftmax",
        "Dropout",
        "Identity",
        "Constant",
        "Pad",
    }
)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """The operator types of ``model`` the converter does not handle, sorted (empty: all fit)."""
    found = {
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        for node in model.graph.node
    }
    return sorted(found - SUPPORTED_OPS)


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its shape arithmetic folded away, when it has any (else ``model`` itself).

    Exporters write "same" padding as ``Shape → Slice → … → Pad`` chains computed at run time
    from the spatial size. With the batch axis pinned to 1 every such chain is constant:
    ONNX Runtime's basic optimizations fold it and merge the resulting constant ``Pad`` into
    the next ``Conv``. Spatial sizes must be fixed in the graph (they usually are for images);
    the folded graph then holds for any batch, since nothing left depends on it except a
    ``Reshape`` to ``[1, -1]`` which the converter reads as ``[batch, -1]``.
    """
    import copy

    import onnx
    import onnxruntime as ort

    if not any(n.op_type in SHAPE_OPS for n in model.graph.node):
        return model
    pinned = copy.deepcopy(model)
    for value in (*pinned.graph.input, *pinned.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_value <= 0:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="forwardpass-fold-") as tmp:
        path = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        ort.InferenceSession(
            pinned.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        folded = onnx.load(str(path))
    # Give the folded graph the source's (dynamic) input/output declarations back.
    for ours, theirs in (
        (folded.graph.input, model.graph.input),
        (folded.graph.output, model.graph.output),
    ):
        by_name = {v.name: v for v in theirs}
        for value in ours:
            if value.name in by_name:
                value.CopyFrom(by_name[value.name])
    return folded


@dataclass(frozen=True, slots=True)
class FlopCount:
    """Multiply-accumulates per sample, in all and per node (Conv, Gemm, MatMul)."""

    macs: int
    by_node: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """Two FLOPs (a multiply and an add) per multiply-accumulate."""
        return 2 * self.macs


def _dims(value: onnx.ValueInfoProto) -> list[int] | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    # Symbolic or unknown dimensions (the batch) count as 1: the figures are per sample.
    return [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]


def count_flops(model: onnx.ModelProto) -> FlopCount:
    """Multiply-accumulates per sample of the Conv, Gemm and MatMul nodes of ``model``.

    A node whose shapes shape inference cannot give is counted from its weights alone (as if
    its output had one position), which is exact for Gemm and a lower bound otherwise.
    """
    import onnx

    model = fold_shapes(model)  # computed padding hides the shapes from inference
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = _dims(value)
        if dims is not None:
            shapes[value.name] = dims
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    by_node: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        key = node.name or f"{node.op_type}_{index}"
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            out = shapes.get(node.output[0])
            positions = int(np.prod(out[2:])) if out else 1
            by_node[key] = positions * int(np.prod(weights[node.input[1]]))
        elif node.op_type == "Gemm" and node.input[1] in weights:
            by_node[key] = int(np.prod(weights[node.input[1]]))
        elif node.op_type == "MatMul":
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a is None:
                continue
            if node.input[1] in weights:
                # Rows of A beyond the batch axis, times the K×N weight.
                rows = int(np.prod(a[1:-1])) if len(a) > 2 else 1
                by_node[key] = rows * int(np.prod(weights[node.input[1]]))
            elif out is not None:
                by_node[key] = int(np.prod(out[1:])) * a[-1]  # every output element: K MACs
    return FlopCount(sum(by_node.values()), by_node)
