"""A small ONNX → torch converter for feed-forward CNNs and MLPs (extra ``torch``).

Pruning and distillation train in torch, so they need the model as an ``nn.Module`` holding
its ONNX weights. :func:`convert` builds a :class:`GraphModule`: one :class:`Step` per ONNX
node, run in graph order, with the weights of Conv, Gemm and MatMul(+Add) nodes in
:class:`Dense` layers and BatchNormalization's in :class:`Norm` layers (statistics frozen).
Only the operators in :data:`~.feedforward.SUPPORTED_OPS` are understood; anything else raises
:class:`~forwardpass.errors.Unsupported` naming the operator. :func:`verify` proves a
conversion by comparing it with ONNX Runtime.

Exporting a :class:`GraphModule` back (:func:`export`) traces its ``forward``: the result
has the same input and output names, a dynamic batch axis where the source had one, opset 17.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.optimize.feedforward import SUPPORTED_OPS, fold_shapes, unsupported_ops

__all__ = ["Dense", "GraphModule", "Norm", "Step", "convert", "export", "verify"]

_ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Dropout", "Identity"}
_ARITHMETIC: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
}


class Dense(nn.Module):
    """The weights of a Conv (``[out, in/groups, *kernel]``) or a Linear (``[out, in]``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.groups = groups


class Norm(nn.Module):
    """BatchNormalization in inference form; the running statistics are never updated."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(scale.astype(np.float32)))
        self.bias = nn.Parameter(torch.from_numpy(bias.astype(np.float32)))
        self.register_buffer("running_mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("running_var", torch.from_numpy(var.astype(np.float32)))
        self.eps = eps


@dataclass(slots=True)
class Step:
    """One ONNX node: its operator, activation inputs, output, layer key and attributes."""

    op: str
    inputs: list[str]
    output: str
    layer: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


class GraphModule(nn.Module):
    """The converted graph; ``logits = True`` skips a final Softmax/LogSoftmax (for training)."""

    def __init__(
        self, steps: list[Step], layers: dict[str, nn.Module], inputs: list[str], outputs: list[str]
    ) -> None:
        super().__init__()
        self.steps = steps
        self.layers = nn.ModuleDict(layers)
        self.input_names = inputs
        self.output_names = outputs
        self.logits = False
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_steps(
        self,
        env: dict[str, torch.Tensor],
        start: int = 0,
        stop: int | None = None,
        logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run ``steps[start:stop]`` on the activations in ``env`` (added to it, and returned).
        With ``logits``, a Softmax or LogSoftmax that makes a model output passes its input on."""
        for step in self.steps[start:stop]:
            args = [env[name] for name in step.inputs]
            if logits and step.op in ("Softmax", "LogSoftmax") and step.output in self.output_names:
                env[step.output] = args[0]
                continue
            env[step.output] = self._run(step, args)
        return env

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env = self.run_steps(dict(zip(self.input_names, inputs, strict=True)), logits=self.logits)
        outs = tuple(env[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def record_shapes(self, *inputs: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Every activation's shape for ``inputs`` (kept in :attr:`shapes`)."""
        with torch.no_grad():
            env = self.run_steps(dict(zip(self.input_names, inputs, strict=True)))
        self.shapes = {name: tuple(value.shape) for name, value in env.items()}
        return self.shapes

    def _run(self, step: Step, args: list[torch.Tensor]) -> torch.Tensor:
        op, a = step.op, step.attrs
        x = args[0] if args else None
        layer = self.layers[step.layer] if step.layer else None
        if op == "Conv":
            assert isinstance(layer, Dense) and x is not None
            if a["pad"] is not None:
                x = F.pad(x, a["pad"])
            conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[layer.weight.dim()]
            return conv(
                x,
                layer.weight,
                layer.bias,
                a["strides"],
                a["padding"],
                a["dilations"],
                layer.groups,
            )
        if op == "Linear":
            assert isinstance(layer, Dense) and x is not None
            return F.linear(x, layer.weight, layer.bias)
        if op == "BatchNormalization":
            assert isinstance(layer, Norm) and x is not None
            return F.batch_norm(
                x,
                layer.running_mean,
                layer.running_var,
                layer.weight,
                layer.bias,
                False,
                0.0,
                layer.eps,
            )
        if op in _ARITHMETIC:
            assert x is not None
            const = self.layers[a["const"]] if len(args) == 1 else None
            other = const.value if isinstance(const, _Const) else args[1]
            left, right = (other, x) if a.get("const_first") else (x, other)
            return _ARITHMETIC[op](left, right)
        return _simple(op, a, x)


def _simple(op: str, a: dict[str, Any], x: torch.Tensor | None) -> torch.Tensor:
    assert x is not None
    dims = x.dim() - 2
    if op == "Relu":
        return F.relu(x)
    if op == "LeakyRelu":
        return F.leaky_relu(x, a["alpha"])
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "Clip":
        return torch.clamp(x, a["min"], a["max"])
    if op in ("Dropout", "Identity"):
        return x
    if op == "Pad":
        return F.pad(x, a["pad"])
    if op == "MaxPool":
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
        return pool(x, a["kernel"], a["strides"], a["padding"], a["dilations"], a["ceil"])
    if op == "AveragePool":
        avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        return avg(x, a["kernel"], a["strides"], a["padding"], a["ceil"], a["include_pad"])
    if op == "GlobalAveragePool":
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    if op == "GlobalMaxPool":
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)
    if op in ("Flatten", "Reshape"):
        return torch.flatten(x, 1)
    if op == "Softmax":
        return torch.softmax(x, a["axis"])
    if op == "LogSoftmax":
        return torch.log_softmax(x, a["axis"])
    raise Unsupported(f"unsupported op {op} for pruning/distillation")


class _Const(nn.Module):
    value: torch.Tensor

    def __init__(self, value: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("value", torch.from_numpy(np.array(value)))


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(node: onnx.NodeProto, why: str) -> Unsupported:
    return Unsupported(
        f"unsupported op {node.op_type} for pruning/distillation (node {node.name or '?'}): {why}"
    )


def _window(node: onnx.NodeProto, attrs: dict[str, Any], rank: int) -> dict[str, Any]:
    """Strides, padding and dilations of Conv/MaxPool/AveragePool, in torch's form."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise _unsupported(node, f"auto_pad {auto_pad} (write explicit pads)")
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    begin, end = pads[:rank], pads[rank:]
    window: dict[str, Any] = {
        "strides": list(attrs.get("strides", [1] * rank)),
        "dilations": list(attrs.get("dilations", [1] * rank)),
        "padding": begin,
        "pad": None,
    }
    if begin != end:
        if node.op_type != "Conv":
            raise _unsupported(node, f"asymmetric pads {pads}")
        # F.pad takes the last axis first: (left, right, top, bottom, ...).
        window["pad"] = [p for i in reversed(range(rank)) for p in (begin[i], end[i])]
        window["padding"] = [0] * rank
    return window


class _Builder:
    """Turns ONNX nodes into steps and layers, one node at a time."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in model.graph.initializer
        }
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        self.outputs = {o.name for o in model.graph.output}
        self.steps: list[Step] = []
        self.layers: dict[str, nn.Module] = {}

    def key(self, node: onnx.NodeProto) -> str:
        return f"n{len(self.steps)}_{node.op_type.lower()}"

    def tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.consts[name], dtype=np.float32))

    def add(self, node: onnx.NodeProto) -> None:
        op, attrs, key = node.op_type, _attrs(node), self.key(node)
        if op == "Constant":
            self.consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
            return
        if op in ("MatMul", "Add", "Sub", "Mul", "Div"):
            self.add_arithmetic(node, key)
            return
        x = node.input[0]
        step = Step(op, [x], node.output[0])
        if op == "Conv":
            weight = self.tensor(node.input[1])
            bias = self.tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            self.layers[key] = Dense(weight, bias, int(attrs.get("group", 1)))
            step.layer, step.attrs = key, _window(node, attrs, weight.dim() - 2)
        elif op == "Gemm":
            self.add_gemm(node, attrs, step, key)
        elif op == "BatchNormalization":
            scale, shift, mean, var = (self.consts[n] for n in node.input[1:5])
            self.layers[key] = Norm(scale, shift, mean, var, float(attrs.get("epsilon", 1e-5)))
            step.layer = key
        elif op in ("MaxPool", "AveragePool"):
            kernel = list(attrs["kernel_shape"])
            step.attrs = {
                **_window(node, attrs, len(kernel)),
                "kernel": kernel,
                "ceil": bool(attrs.get("ceil_mode", 0)),
                "include_pad": bool(attrs.get("count_include_pad", 0)),
            }
            if op == "AveragePool" and step.attrs["dilations"] != [1] * len(kernel):
                raise _unsupported(node, "dilated average pooling")
        elif op == "Flatten" and int(attrs.get("axis", 1)) != 1:
            raise _unsupported(node, "only Flatten(axis=1) is supported")
        elif op == "Reshape":
            shape = self.consts.get(node.input[1])
            if shape is None or shape.size != 2 or (shape[0] not in (0, -1) and shape[1] != -1):
                raise _unsupported(node, "only a reshape to [batch, -1] is supported")
        elif op == "Clip":
            lo = self.consts[node.input[1]] if len(node.input) > 1 and node.input[1] else None
            hi = self.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            lo = attrs.get("min") if lo is None else lo  # opset < 11: attributes
            hi = attrs.get("max") if hi is None else hi
            step.attrs = {
                "min": None if lo is None else float(lo),
                "max": None if hi is None else float(hi),
            }
        elif op == "Pad":
            step.attrs = {"pad": self.pad(node, attrs)}
        elif op == "LeakyRelu":
            step.attrs = {"alpha": float(attrs.get("alpha", 0.01))}
        elif op in ("Softmax", "LogSoftmax"):
            step.attrs = {"axis": int(attrs.get("axis", -1))}
        elif op not in _ACTIVATIONS | {"GlobalAveragePool", "GlobalMaxPool", "Flatten"}:
            raise _unsupported(node, "not a feed-forward CNN/MLP operator")
        self.steps.append(step)

    def pad(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> list[int]:
        """A constant zero ``Pad`` of the spatial axes, in ``F.pad``'s order (last axis first)."""
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = self.consts.get(node.input[1]) if len(node.input) > 1 else None
        value = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if mode != "constant" or pads is None or (len(node.input) > 3 and node.input[3]):
            raise _unsupported(node, "only a constant zero Pad with constant pads is supported")
        if value is not None and float(np.asarray(value).reshape(-1)[0]) != 0.0:
            raise _unsupported(node, "only zero padding is supported")
        widths = [int(p) for p in np.asarray(pads).reshape(-1)]
        rank = len(widths) // 2
        begin, end = widths[:rank], widths[rank:]
        if any(begin[:2]) or any(end[:2]):
            raise _unsupported(node, "padding of the batch or channel axis")
        return [p for i in reversed(range(2, rank)) for p in (begin[i], end[i])]

    def add_gemm(self, node: onnx.NodeProto, attrs: dict[str, Any], step: Step, key: str) -> None:
        if attrs.get("transA", 0) or node.input[1] not in self.consts:
            raise _unsupported(node, "Gemm needs a constant B and transA = 0")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        weight = self.tensor(node.input[1])
        weight = alpha * (weight if attrs.get("transB", 0) else weight.T)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = (beta * self.tensor(node.input[2])).reshape(-1)
            bias = bias.expand(weight.shape[0]).clone() if bias.numel() == 1 else bias
        self.layers[key] = Dense(weight.contiguous(), bias)
        step.op, step.layer = "Linear", key

    def add_arithmetic(self, node: onnx.NodeProto, key: str) -> None:
        left, right = node.input[0], node.input[1]
        if node.op_type == "MatMul":
            if right not in self.consts or self.consts[right].ndim != 2:
                raise _unsupported(node, "MatMul needs a constant 2-D right operand")
            self.layers[key] = Dense(self.tensor(right).T.contiguous(), None)
            self.steps.append(Step("Linear", [left], node.output[0], key))
            return
        previous = self.steps[-1] if self.steps else None
        const_first = left in self.consts
        const = left if const_first else right if right in self.consts else None
        if (  # MatMul + Add of a bias vector: one Linear layer
            node.op_type == "Add"
            and const is not None
            and previous is not None
            and previous.op == "Linear"
            and previous.output in (left, right)
            and self.uses.get(previous.output) == 1
            and previous.output not in self.outputs
        ):
            dense = self.layers[previous.layer or ""]
            assert isinstance(dense, Dense)
            bias = self.tensor(const).reshape(-1)
            if dense.bias is None and bias.numel() in (1, dense.weight.shape[0]):
                dense.bias = nn.Parameter(bias.expand(dense.weight.shape[0]).clone())
                previous.output = node.output[0]
                return
        if const is None:
            self.steps.append(Step(node.op_type, [left, right], node.output[0]))
            return
        self.layers[key] = _Const(self.consts[const].astype(np.float32))
        other = right if const_first else left
        self.steps.append(
            Step(
                node.op_type,
                [other],
                node.output[0],
                None,
                {"const": key, "const_first": const_first},
            )
        )


def convert(model: onnx.ModelProto) -> GraphModule:
    """``model`` as a :class:`GraphModule` with its weights (float32, eval mode).

    Shape arithmetic (computed "same" padding) is folded first (:func:`.fold_shapes`).
    Raises :class:`Unsupported` naming the first operator (or operator form) it cannot take.
    """
    model = fold_shapes(model)
    missing = unsupported_ops(model)
    if missing:
        raise Unsupported(
            f"unsupported op {', '.join(missing)} for pruning/distillation: the torch converter "
            f"takes feed-forward CNN/MLP graphs ({', '.join(sorted(SUPPORTED_OPS))})"
        )
    builder = _Builder(model)
    for node in model.graph.node:
        builder.add(node)
    inputs = [i.name for i in model.graph.input if i.name not in builder.consts]
    outputs = [o.name for o in model.graph.output]
    module = GraphModule(builder.steps, builder.layers, inputs, outputs)
    return module.eval()


def _ort_outputs(model: onnx.ModelProto | Path, feeds: Mapping[str, np.ndarray]) -> list[Any]:
    import onnxruntime as ort

    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def verify(
    model: onnx.ModelProto | Path, module: GraphModule, feeds: Mapping[str, np.ndarray]
) -> float:
    """Largest absolute difference between ONNX Runtime and ``module`` over every output."""
    expected = _ort_outputs(model, feeds)
    logits, module.logits = module.logits, False
    try:
        with torch.no_grad():
            got = module(*(torch.from_numpy(feeds[n]) for n in module.input_names))
    finally:
        module.logits = logits
    got_list = list(got) if isinstance(got, tuple) else [got]
    return max(
        float(np.max(np.abs(e - g.numpy()))) if e.size else 0.0
        for e, g in zip(expected, got_list, strict=True)
    )


def export(
    module: nn.Module,
    path: Path,
    samples: Sequence[np.ndarray],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    dynamic_batch: bool = True,
) -> None:
    """Export ``module`` (eval mode) to ``path``: opset 17, the TorchScript exporter."""
    from forwardpass.importers.torch import quiet_export

    if len(samples) != len(input_names):
        raise InvalidArgument("one sample array per input name")
    axes = {n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None
    was_training = module.training
    module.eval()
    try:
        quiet_export(
            torch,
            module,
            tuple(torch.from_numpy(s) for s in samples),
            path,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
        )
    finally:
        module.train(was_training)
