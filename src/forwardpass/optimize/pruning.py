"""Pruning: structured (whole channels and neurons, fewer FLOPs) and unstructured (zeros).

Structured pruning (:func:`prune_structured`, extra ``torch``) removes output channels of
convolutions and hidden neurons of dense layers, so the pruned model does less arithmetic on any
engine:

1. the ONNX graph becomes a :class:`~.torch_graph.GraphModule` (checked against ONNX Runtime);
2. :func:`channel_groups` finds each prunable layer and where its channels go: through
   element-wise ops, pooling, BatchNorm (sliced along) and depthwise convolutions (sliced
   along) into the *consumers* whose input channels (after a Flatten: blocks of features) are
   removed with them. A layer whose channels reach a model output, a skip connection (Add of two
   activations) or anything else is left whole, and the report says why;
3. channels are ranked by L1 norm of their weights (times |γ/σ| of a following BatchNorm), or
   by *sensitivity*: how much the outputs move, on a few batches, when the channel is masked;
4. the same fraction of the lowest-ranked channels is removed from every group, that fraction
   found by bisection so the Conv/Gemm/MatMul FLOPs fall by at least the target — or, with
   ``speedup``, each group loses what it can best afford: its sensitivity measured alone, its
   cost in ONNX Runtime's kernel times, allocated greedily (:mod:`.allocation`);
5. optionally, block-wise reconstruction (:mod:`.blocks`): each changed block trained alone
   so its output on the pruned network's input matches the original block's;
6. a short fine-tune by distillation from the original's outputs (:mod:`.training`; labels,
   when given, add a cross-entropy term); export (opset 17, dynamic batch), uneven pads
   folded back into the convolutions (:mod:`.padfold`) and a check against ONNX Runtime.

Unstructured pruning (:func:`prune_unstructured`, no torch) zeroes the smallest weights. ONNX
Runtime multiplies zeros like any number: the file compresses better, but no speed-up is
expected, and the notes say so next to the latency actually measured.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from forwardpass.errors import Unsupported
from forwardpass.optimize.blocks import BlockFit, BlockSettings
from forwardpass.optimize.feedforward import count_flops
from forwardpass.optimize.training import (
    FitSettings,
    OutputKind,
    fit,
    kept_judgement,
    output_kind,
    teacher_targets,
)

if TYPE_CHECKING:
    import onnx
    import torch

    from forwardpass.optimize.torch_graph import Dense, GraphModule, Step

__all__ = [
    "ChannelGroup",
    "PruneOptions",
    "PruneResult",
    "channel_groups",
    "prune_structured",
    "prune_unstructured",
    "reconstruct",
]

Score = Literal["l1", "sensitivity", "activation"]
Layers = Literal["all", "expansion"]
NO_SPEEDUP = "zeros the engine cannot exploit: no speed-up expected"
#: Channel c in, channel c out (Pad: zeros around each channel's map).
_ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Dropout", "Identity", "Pad"}
_POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
_MAX_RATIO = 0.95
#: Positions a least-squares re-fit samples at most (XᵀX costs rows × channels²).
_MAX_ROWS = 100_000
#: A least-squares re-fit needs this many rows (positions × samples) per input column.
_MIN_ROWS_PER_INPUT = 1


@dataclass(frozen=True, slots=True)
class PruneOptions:
    """How much to prune, how to rank channels, and how to fine-tune afterwards."""

    flops_reduction: float = 0.4
    score: Score = "l1"
    fit: FitSettings = field(default_factory=lambda: FitSettings(epochs=15, learning_rate=1e-3))
    #: Samples the sensitivity score runs on.
    probe_samples: int = 256
    #: Keep channel counts multiples of this (CPU kernels work in blocks of 4, 8 or 16
    #: channels: 6 channels may cost what 8 do). 1 keeps exact counts.
    channel_multiple: int = 4
    #: Which groups lose channels: ``all``, or ``expansion`` — only 1×1 convolutions feeding a
    #: depthwise one (the expansion layers of inverted-residual blocks, where MobileNet-style
    #: networks spend most of their FLOPs; stems, projections and heads stay whole).
    layers: Layers = "all"
    #: Samples whose activations re-fit each consumer after the cut (0: none), see
    #: :func:`reconstruct`. Cheap (forward passes and one least-squares solve per layer).
    reconstruct_samples: int = 0
    #: Ridge term of that solve, relative to the mean diagonal of XᵀX.
    ridge: float = 1e-3
    #: When > 0: cut where it buys the most time per unit of distortion until ONNX Runtime's
    #: kernel times predict this speed-up (:mod:`.allocation`), instead of one ratio for every
    #: group to ``flops_reduction``.
    speedup: float = 0.0
    #: Views the per-group sensitivity runs on (half re-fit each trial, half judge it).
    sensitivity_samples: int = 64
    #: Views block-wise reconstruction trains each changed block on (0: none), after the
    #: least-squares re-fit and before the fine-tune, see :mod:`.blocks`.
    block_samples: int = 0
    blocks: BlockSettings = field(default_factory=BlockSettings)


@dataclass(slots=True)
class ChannelGroup:
    """A prunable layer (``producer``) and the layers its channels feed or pass through."""

    producer: str
    tensor: str
    channels: int
    passthrough: list[str] = field(default_factory=list)
    #: (layer, block): the consumer's input features ``c*block … (c+1)*block-1`` are channel c.
    consumers: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What pruning did and what it saved (FLOPs per sample, counted on the ONNX files)."""

    method: str
    flops_before: int
    flops_after: int
    parameters_before: int
    parameters_after: int
    #: Per pruned layer (its output tensor): channels before and after.
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Layers left whole, and why.
    kept_whole: dict[str, str] = field(default_factory=dict)
    losses: tuple[float, ...] = ()
    max_abs_diff: float = 0.0
    #: Consumers re-fitted by least squares after the cut (see :func:`reconstruct`).
    reconstructed: int = 0
    #: Speed-up the kernel-time model predicted for the plan (0: allocation by FLOPs).
    predicted_speedup: float = 0.0
    #: Pad nodes of the export folded back into their convolutions.
    pads_folded: int = 0
    #: Blocks trained to the original's block outputs (see :mod:`.blocks`).
    blocks: tuple[BlockFit, ...] = ()
    #: The fine-tune's judgements on validation inputs: (step, top-1 agreement, loss).
    validation: tuple[tuple[int, float, float], ...] = ()

    @property
    def reduction(self) -> float:
        """Share of the FLOPs removed."""
        return 1.0 - self.flops_after / max(self.flops_before, 1)

    def notes(self) -> list[str]:
        """One-line facts for a report."""
        notes = [
            f"FLOPs/sample {self.flops_before:,} → {self.flops_after:,} "
            f"(−{self.reduction:.1%}); parameters {self.parameters_before:,} → "
            f"{self.parameters_after:,}"
        ]
        if self.method == "unstructured":
            notes.append(NO_SPEEDUP)
        if self.channels:
            notes.append(
                "channels "
                + ", ".join(f"{_short(k)} {a}→{b}" for k, (a, b) in self.channels.items())
            )
        notes += [f"kept whole: {_short(k)} ({why})" for k, why in self.kept_whole.items()]
        if self.predicted_speedup:
            notes.append(
                f"channels allocated by sensitivity per unit of ONNX Runtime kernel time: "
                f"{self.predicted_speedup:.2f}× predicted at batch 1, one thread"
            )
        if self.pads_folded:
            notes.append(f"{self.pads_folded} Pad nodes of the export folded into their Convs")
        if self.reconstructed:
            notes.append(f"{self.reconstructed} layers re-fitted by least squares after the cut")
        if self.blocks:
            kept = [b for b in self.blocks if b.kept]
            before = sum(b.error_before for b in self.blocks) / len(self.blocks)
            after = sum(b.error_after for b in self.blocks) / len(self.blocks)
            notes.append(
                f"{len(kept)} of {len(self.blocks)} blocks trained to the original's block "
                f"outputs: relative error on views kept aside {before:.4f} → {after:.4f} (mean)"
            )
        if self.losses:
            notes.append(f"fine-tune loss {self.losses[0]:.4f} → {self.losses[-1]:.4f}")
        if self.validation:
            start = self.validation[0]
            best = kept_judgement(self.validation)
            notes.append(
                f"fine-tune judged on validation views {len(self.validation) - 1} times: kept "
                f"step {best[0]} (top-1 agreement {start[1]:.1%} at the start, {best[1]:.1%} kept)"
            )
        return notes


def _short(tensor: str) -> str:
    """``/inner/features/features.0/Conv_output_0`` → ``features.0/Conv``."""
    return "/".join(tensor.strip("/").split("/")[-2:]).removesuffix("_output_0")


# -- finding the groups --------------------------------------------------------------------


def _walk(module: GraphModule, group: ChannelGroup, tensor: str, block: int) -> str | None:
    """Follow channel ``tensor`` to its consumers, filling ``group``; why not, or None."""
    from forwardpass.optimize.torch_graph import Dense

    if tensor in module.output_names:
        return "its channels are a model output"
    shape = module.shapes[tensor]
    for step in (s for s in module.steps if tensor in s.inputs):
        layer = module.layers[step.layer] if step.layer else None
        if step.op in _ELEMENTWISE or (step.op in _POOLS and block == 1):
            why = _walk(module, group, step.output, block)
        elif step.op in ("Add", "Sub", "Mul", "Div") and len(step.inputs) == 1:
            const = module.layers[step.attrs["const"]]
            if int(const.value.numel()) != 1:  # type: ignore[operator]
                return f"{step.op} with a per-channel constant follows"
            why = _walk(module, group, step.output, block)
        elif step.op == "BatchNormalization" and block == 1 and step.layer:
            group.passthrough.append(step.layer)
            why = _walk(module, group, step.output, block)
        elif step.op == "Conv" and isinstance(layer, Dense) and step.layer and block == 1:
            if layer.groups == 1:
                group.consumers.append((step.layer, 1))
                why = None
            elif layer.groups == group.channels and layer.weight.shape[:2] == (group.channels, 1):
                group.passthrough.append(step.layer)  # depthwise: channel c stays channel c
                why = _walk(module, group, step.output, block)
            else:
                return "a grouped convolution follows"
        elif step.op == "Linear" and step.layer and len(shape) == 2:
            group.consumers.append((step.layer, block))
            why = None
        elif step.op in ("Flatten", "Reshape") and block == 1:
            why = _walk(module, group, step.output, int(np.prod(shape[2:])) if shape[2:] else 1)
        else:
            if step.op == "Add":
                return "a skip connection (Add of two activations) follows"
            return f"{step.op} follows, which needs every channel"
        if why:
            return why
    return None


def channel_groups(module: GraphModule) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The prunable groups of ``module`` (shapes recorded), and the layers kept whole, with why."""
    from forwardpass.optimize.torch_graph import Dense

    groups, whole = [], {}
    for step in module.steps:
        layer = module.layers[step.layer] if step.layer else None
        if not isinstance(layer, Dense) or step.op not in ("Conv", "Linear"):
            continue
        if step.op == "Conv" and layer.groups != 1:
            continue  # a depthwise convolution follows its producer's channels
        if step.op == "Linear" and len(module.shapes[step.output]) != 2:
            whole[step.output] = "its output is not [batch, features]"
            continue
        group = ChannelGroup(step.layer or "", step.output, int(layer.weight.shape[0]))
        why = _walk(module, group, step.output, 1)
        if why:
            whole[step.output] = why
        elif group.channels > 1:
            groups.append(group)
    return groups, whole


# -- ranking, slicing, counting ------------------------------------------------------------


def _slice(param: Any, index: torch.Tensor, dim: int) -> Any:
    import torch

    return None if param is None else torch.nn.Parameter(param.detach().index_select(dim, index))


def _columns(keep: torch.Tensor, block: int) -> torch.Tensor:
    import torch

    return (keep[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def apply_pruning(
    module: GraphModule, groups: list[ChannelGroup], keeps: Mapping[str, torch.Tensor]
) -> GraphModule:
    """A copy of ``module`` keeping channels ``keeps[producer]`` of each group."""
    from forwardpass.optimize.torch_graph import Dense, Norm

    pruned = copy.deepcopy(module)
    for group in groups:
        keep = keeps[group.producer]
        if len(keep) == group.channels:
            continue
        producer = pruned.layers[group.producer]
        producer.weight, producer.bias = (
            _slice(producer.weight, keep, 0),
            _slice(producer.bias, keep, 0),
        )
        for key in group.passthrough:
            layer = pruned.layers[key]
            if isinstance(layer, Norm):
                layer.weight, layer.bias = (
                    _slice(layer.weight, keep, 0),
                    _slice(layer.bias, keep, 0),
                )
                layer.running_mean = layer.running_mean.index_select(0, keep)
                layer.running_var = layer.running_var.index_select(0, keep)
            elif isinstance(layer, Dense):
                layer.weight, layer.bias = (
                    _slice(layer.weight, keep, 0),
                    _slice(layer.bias, keep, 0),
                )
                layer.groups = len(keep)
        for key, block in group.consumers:
            consumer = _dense(pruned, key)
            consumer.weight = _slice(consumer.weight, _columns(keep, block), 1)
    return pruned


def module_macs(module: GraphModule) -> int:
    """Multiply-accumulates per sample of the Conv and Linear steps (shapes recorded)."""
    total = 0
    for step in module.steps:
        if step.op in ("Conv", "Linear") and step.layer:
            shape = module.shapes[step.output]
            positions = shape[2:] if step.op == "Conv" else shape[1:-1]
            weight = _dense(module, step.layer).weight
            total += int(np.prod(positions)) * int(weight.numel())
    return total


def _dense(module: GraphModule, key: str) -> Dense:
    from forwardpass.optimize.torch_graph import Dense

    layer = module.layers[key]
    assert isinstance(layer, Dense)
    return layer


def _loss(out: Any, targets: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    from forwardpass.optimize.training import distillation_loss

    return distillation_loss(out, targets, kind, 1.0)


def _l1_scores(module: GraphModule, group: ChannelGroup) -> torch.Tensor:
    from forwardpass.optimize.torch_graph import Norm

    weight = _dense(module, group.producer).weight.detach()
    score = weight.abs().reshape(group.channels, -1).sum(1)
    for key in group.passthrough:
        norm = module.layers[key]
        if isinstance(norm, Norm):  # a channel BatchNorm scales to nothing carries nothing
            score = score * (norm.weight.detach() / (norm.running_var + norm.eps).sqrt()).abs()
    return score


def _activation_scores(
    module: GraphModule, groups: list[ChannelGroup], probe: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per group: mean |activation| reaching its consumers × the norm of their weights there.

    A channel is worth what it contributes downstream: how large it is on real inputs, times
    how much the next layer listens to it. Unlike the weights' L1 norm, this sees a channel
    BatchNorm (folded into the weights) shifted to a near-constant output.
    """
    import torch

    consumers: dict[str, list[tuple[ChannelGroup, int]]] = {}
    for group in groups:
        for key, block in group.consumers:
            consumers.setdefault(key, []).append((group, block))
    scores = {g.producer: torch.zeros(g.channels, dtype=torch.float64) for g in groups}
    env = dict(zip(module.input_names, [probe], strict=True))
    with torch.no_grad():
        for step in module.steps:
            args = [env[n] for n in step.inputs]
            for group, block in consumers.get(step.layer or "", []):
                x = args[0]
                size = x.abs().mean(0)
                size = size.reshape(size.shape[0], -1).mean(1) if size.dim() > 1 else size
                weight = _dense(module, step.layer or "").weight.detach()
                column = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
                contribution = (size * column).double().reshape(group.channels, block).sum(1)
                scores[group.producer] += contribution
            env[step.output] = module._run(step, args)
    return {k: v.float() for k, v in scores.items()}


def _sensitivity_scores(
    module: GraphModule,
    group: ChannelGroup,
    probe: list[torch.Tensor],
    targets: torch.Tensor,
    kind: OutputKind,
) -> torch.Tensor:
    """Loss increase on ``probe`` when each channel is masked (its consumers' inputs zeroed)."""
    import torch

    scores = torch.zeros(group.channels)
    with torch.no_grad():
        base = float(_loss(module(*probe), targets, kind))
        for c in range(group.channels):
            saved = []
            for key, block in group.consumers:
                weight = _dense(module, key).weight
                cols = _columns(torch.tensor([c]), block)
                saved.append((weight, cols, weight[:, cols].clone()))
                weight[:, cols] = 0
            out = module(*probe)
            scores[c] = float(_loss(out, targets, kind)) - base
            for weight, cols, values in saved:
                weight[:, cols] = values
    return scores


def _expansions(
    module: GraphModule, groups: list[ChannelGroup]
) -> tuple[list[ChannelGroup], list[ChannelGroup]]:
    """(expansion groups, the others) of ``groups``: see :attr:`PruneOptions.layers`."""
    from forwardpass.optimize.torch_graph import Dense

    chosen: list[ChannelGroup] = []
    others: list[ChannelGroup] = []
    for group in groups:
        weight = _dense(module, group.producer).weight
        depthwise = any(
            isinstance(layer := module.layers[key], Dense) and layer.groups > 1
            for key in group.passthrough
        )
        pointwise = all(int(k) == 1 for k in weight.shape[2:]) and weight.dim() > 2
        (chosen if depthwise and pointwise else others).append(group)
    return chosen, others


def _refittable(module: GraphModule, step: Step) -> bool:
    """Whether ``step`` is a Linear or an unpadded, unstrided, ungrouped 1×1 convolution."""
    if step.op == "Linear":
        return True
    if step.op != "Conv" or not step.layer:
        return False
    layer = _dense(module, step.layer)
    return (
        layer.groups == 1
        and all(int(k) == 1 for k in layer.weight.shape[2:])
        and step.attrs.get("pad") is None
        and not any(step.attrs.get("padding", []))
        and all(s == 1 for s in step.attrs.get("strides", []))
    )


def _solve(layer: Dense, inputs: torch.Tensor, target: torch.Tensor, ridge: float) -> None:
    """Set ``layer`` (1×1 conv or linear) to the least-squares map ``inputs → target``.

    Ridge-regularised towards the layer's current (sliced original) weights, not towards
    zero: where a few samples do not pin a weight down, it stays what training made it. With
    fewer than ``_MIN_ROWS_PER_INPUT`` rows per input column only the bias is corrected.
    """
    import torch

    if inputs.dim() > 2:  # a few random positions of every sample (the same for each)
        positions = inputs[0, 0].numel()
        take = min(positions, max(1, _MAX_ROWS // len(inputs)))
        index = torch.randperm(positions, generator=torch.Generator().manual_seed(0))[:take]
        inputs, target = inputs.flatten(2)[:, :, index], target.flatten(2)[:, :, index]
    x = inputs.movedim(1, -1).reshape(-1, inputs.shape[1]).double()
    y = target.movedim(1, -1).reshape(-1, target.shape[1]).double()
    if len(x) < _MIN_ROWS_PER_INPUT * x.shape[1]:
        # Fewer rows than unknowns (a dense layer on a few dozen samples): a solve would fit
        # those samples and nothing else. Only the bias moves, by the mean residual.
        current = x @ layer.weight.detach().reshape(len(layer.weight), -1).double().T
        layer.bias = torch.nn.Parameter((y - current).mean(0).float().contiguous())
        return
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    old = layer.weight.detach().reshape(len(layer.weight), -1).double()
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(len(old))
    prior = torch.cat([old.T, bias.to(old.dtype)[None, :]])  # [in + 1, out]
    gram = x.T @ x
    strength = ridge * float(gram.diagonal().mean())
    gram += torch.eye(len(gram), dtype=x.dtype) * strength
    solution = torch.linalg.solve(gram, x.T @ y + strength * prior)
    weight = solution[:-1].T.float().reshape(layer.weight.shape)
    layer.weight = torch.nn.Parameter(weight.contiguous())
    layer.bias = torch.nn.Parameter(solution[-1].float().contiguous())


def reconstruct(
    original: GraphModule,
    pruned: GraphModule,
    groups: list[ChannelGroup],
    inputs: torch.Tensor,
    ridge: float = 1e-3,
    keeps: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Re-fit the consumers of ``groups`` in ``pruned`` to reproduce ``original``; how many.

    The layer after a cut (a projection in an inverted-residual block, a dense layer after a
    pruned convolution) still weighs the surviving channels as if the removed ones were there.
    Walking both networks together over ``inputs``, each such consumer that is a 1×1
    convolution or a linear layer is solved by ridge least squares to map the *pruned*
    network's activations onto the *original*'s outputs at that point (He et al., 2017,
    "Channel pruning for accelerating very deep neural networks"); later layers then see the
    errors of the earlier fits, not of the raw cut. Other consumers are left to the fine-tune.
    A consumer that lost output channels too (it is itself a pruned producer) is fitted to the
    original's kept channels, ``keeps[layer]``; without ``keeps`` it is left as it is.
    """
    import torch

    wanted = {key for g in groups for key, block in g.consumers if block == 1}
    last_use: dict[str, int] = {}
    for index, step in enumerate(original.steps):
        for name in step.inputs:
            last_use[name] = index
    env_o = dict(zip(original.input_names, [inputs], strict=True))
    env_p = dict(env_o)
    count = 0
    with torch.no_grad():
        for index, (ours, theirs) in enumerate(zip(pruned.steps, original.steps, strict=True)):
            out_o = original._run(theirs, [env_o[n] for n in theirs.inputs])
            args = [env_p[n] for n in ours.inputs]
            if ours.layer in wanted and _refittable(pruned, ours):
                target = out_o
                if keeps is not None and ours.layer in keeps:
                    target = out_o.index_select(1, keeps[ours.layer])
                if target.shape[1] == _dense(pruned, ours.layer).weight.shape[0]:
                    _solve(_dense(pruned, ours.layer), args[0], target, ridge)
                    count += 1
            env_o[theirs.output] = out_o
            env_p[ours.output] = pruned._run(ours, args)
            for name in [n for n in ours.inputs if last_use.get(n) == index]:
                env_o.pop(name, None)
                env_p.pop(name, None)
    return count


def _keeps(
    groups: list[ChannelGroup], order: Mapping[str, torch.Tensor], ratio: float, multiple: int
) -> dict[str, torch.Tensor]:
    keeps = {}
    for g in groups:
        count = max(1, round(g.channels * (1.0 - ratio)))
        if multiple > 1:  # a layer of at most `multiple` channels stays whole
            count = min(g.channels, max(multiple, multiple * round(count / multiple)))
        keeps[g.producer] = order[g.producer][-count:].sort().values
    return keeps


def _search(
    module: GraphModule,
    groups: list[ChannelGroup],
    order: Mapping[str, torch.Tensor],
    goal: float,
    multiple: int = 1,
) -> tuple[GraphModule, dict[str, torch.Tensor]]:
    """The smallest common ratio whose pruning removes at least ``goal`` of the MACs."""
    before = module_macs(module)

    def reduction(ratio: float) -> float:
        return (
            1.0
            - module_macs(apply_pruning(module, groups, _keeps(groups, order, ratio, multiple)))
            / before
        )

    if reduction(_MAX_RATIO) < goal:
        raise Unsupported(
            f"structured pruning can remove at most {reduction(_MAX_RATIO):.0%} of this model's "
            f"FLOPs (the rest is in layers that must stay whole), less than {goal:.0%}"
        )
    low, high = 0.0, _MAX_RATIO
    for _ in range(20):
        mid = (low + high) / 2
        low, high = (mid, high) if reduction(mid) < goal else (low, mid)
    keeps = _keeps(groups, order, high, multiple)
    return apply_pruning(module, groups, keeps), keeps


# -- the two entry points ------------------------------------------------------------------


def _single_io(model: onnx.ModelProto) -> tuple[str, str]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise Unsupported("pruning and distillation take a model with one input and one output")
    return inputs[0], model.graph.output[0].name


def run_onnx(model: onnx.ModelProto | Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The (only) output of ``model`` on ``x``, in batches (one sample at a time if fixed)."""
    import onnxruntime as ort

    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    fixed = first.shape[0] if isinstance(first.shape[0], int) and first.shape[0] > 0 else 0
    size = fixed or batch
    name = first.name
    return np.concatenate(
        [session.run(None, {name: x[i : i + size]})[0] for i in range(0, len(x), size)]
    )


def prune_structured(
    model: onnx.ModelProto,
    output: Path,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    options: PruneOptions | None = None,
    validation: np.ndarray | None = None,
) -> PruneResult:
    """Prune ``model`` to ``options.flops_reduction`` fewer FLOPs, fine-tune, write ``output``.

    ``inputs`` (one array, samples first) is the fine-tune data; ``labels`` are optional.
    ``validation`` inputs (never trained on) stop the fine-tune early: it ends in the state
    that agreed best with the original on them (:func:`.training.fit`).
    Raises :class:`Unsupported` for a model the converter or the pruner cannot handle.
    """
    import torch

    from forwardpass.optimize.accuracy import detect_task
    from forwardpass.optimize.candidates import count_parameters
    from forwardpass.optimize.torch_graph import convert, export, verify

    options = options or PruneOptions()
    in_name, out_name = _single_io(model)
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    module = convert(model)
    diff = verify(model, module, {in_name: inputs[:32]})
    if not diff <= 1e-4:
        raise Unsupported(f"the torch conversion differs from ONNX Runtime by {diff:.2e}")
    module.record_shapes(torch.from_numpy(inputs[:1]))
    groups, whole = channel_groups(module)
    if options.layers == "expansion":
        groups, others = _expansions(module, groups)
        whole.update({g.tensor: "not an expansion (1×1 conv into a depthwise one)" for g in others})
    if not groups:
        raise Unsupported(
            "no layer can lose channels: " + "; ".join(f"{k}: {v}" for k, v in whole.items())
        )
    teacher = run_onnx(model, inputs)
    classification = detect_task(teacher, out_name, labels, False) == "classification"
    kind = output_kind(model, out_name, classification)
    targets = teacher_targets(teacher, kind)
    module.logits = True
    order = {}
    if options.score == "activation":
        found = _activation_scores(
            module, groups, torch.from_numpy(inputs[: options.probe_samples])
        )
        order = {k: torch.argsort(v) for k, v in found.items()}
    for g in groups if options.score != "activation" else ():
        if options.score == "sensitivity":
            probe = [torch.from_numpy(inputs[: options.probe_samples])]
            target = torch.from_numpy(targets[: options.probe_samples])
            score = _sensitivity_scores(module, g, probe, target, kind)
        else:
            score = _l1_scores(module, g)
        order[g.producer] = torch.argsort(score)  # ascending: the first are removed first
    predicted = 0.0
    if options.speedup > 0:
        pruned, keeps, predicted = _allocated(model, module, groups, order, inputs, options)
    else:
        pruned, keeps = _search(
            module, groups, order, options.flops_reduction, options.channel_multiple
        )
    refit = 0
    if options.reconstruct_samples > 0:
        sample = torch.from_numpy(inputs[: options.reconstruct_samples])
        refit = reconstruct(module, pruned, groups, sample, options.ridge, keeps)
    block_fits: list[BlockFit] = []
    if options.block_samples > 0:
        from forwardpass.optimize.blocks import reconstruct_blocks

        sample = torch.from_numpy(inputs[: options.block_samples])
        block_fits = reconstruct_blocks(module, pruned, sample, options.blocks)
    losses: list[float] = []
    history: list[tuple[int, float, float]] = []
    if options.fit.max_steps > 0:
        judged = None
        if validation is not None:
            validation = np.ascontiguousarray(validation, dtype=np.float32)
            judged = ([validation], teacher_targets(run_onnx(model, validation), kind))
        losses = fit(
            pruned,
            [inputs],
            targets,
            kind,
            options.fit,
            labels if classification else None,
            validation=judged,
            history=history,
        )
    pruned.logits = False
    dynamic = not any(d.dim_value > 0 for d in model.graph.input[0].type.tensor_type.shape.dim[:1])
    export(pruned, output, [inputs[:2]], [in_name], [out_name], dynamic_batch=dynamic)
    from forwardpass.optimize.padfold import fold_pads

    folded = fold_pads(output)  # uneven "same" pads back into the Convs (see padfold.py)
    import onnx

    written = onnx.load(str(output))
    after_diff = verify(written, pruned, {in_name: inputs[:32]})
    if not after_diff <= 1e-4:
        raise Unsupported(f"the pruned export differs from torch by {after_diff:.2e}")
    source_params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    return PruneResult(
        method=f"structured-{options.score}",
        flops_before=count_flops(model).flops,
        flops_after=count_flops(written).flops,
        parameters_before=source_params,
        parameters_after=count_parameters(output),
        channels={g.tensor: (g.channels, len(keeps[g.producer])) for g in groups},
        kept_whole=whole,
        losses=tuple(losses),
        max_abs_diff=after_diff,
        reconstructed=refit,
        predicted_speedup=predicted,
        pads_folded=folded,
        blocks=tuple(block_fits),
        validation=tuple(history),
    )


def _allocated(
    model: onnx.ModelProto,
    module: GraphModule,
    groups: list[ChannelGroup],
    order: Mapping[str, torch.Tensor],
    inputs: np.ndarray,
    options: PruneOptions,
) -> tuple[GraphModule, dict[str, torch.Tensor], float]:
    """Prune by :func:`.allocation.allocate`: (pruned, kept channels, predicted speed-up)."""
    import torch

    from forwardpass.optimize.allocation import (
        allocate,
        group_sensitivity,
        layer_times,
        predicted_time,
    )

    half = max(1, min(options.sensitivity_samples, len(inputs)) // 2)
    if len(inputs) < 2 * half:
        raise Unsupported("sensitivity allocation needs at least two samples")
    sample = torch.from_numpy(inputs[: 2 * half])
    found = group_sensitivity(
        module,
        groups,
        order,
        sample[:half],
        sample[half:],
        multiple=options.channel_multiple,
        ridge=options.ridge,
    )
    times = layer_times(model, module)
    counts = allocate(groups, found, times, options.speedup, options.channel_multiple)
    keeps = {g.producer: order[g.producer][-counts[g.producer] :].sort().values for g in groups}
    speedup = times.total / predicted_time(times, groups, counts)
    return apply_pruning(module, groups, keeps), keeps, speedup


def prune_unstructured(model: onnx.ModelProto, output: Path, sparsity: float = 0.5) -> PruneResult:
    """Zero the ``sparsity`` smallest-magnitude weights of every Conv/Gemm/MatMul; write it."""
    import onnx
    from onnx import numpy_helper

    pruned = copy.deepcopy(model)
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    params = 0
    for init in pruned.graph.initializer:
        params += int(np.prod(init.dims))
        if init.name not in weights:
            continue
        array = numpy_helper.to_array(init).copy()
        cut = np.quantile(np.abs(array), sparsity)
        array[np.abs(array) <= cut] = 0
        init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(pruned, str(output))
    flops = count_flops(model).flops
    return PruneResult("unstructured", flops, flops, params, params)
