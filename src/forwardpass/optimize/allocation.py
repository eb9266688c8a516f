"""Where structured pruning cuts: measured kernel times, per-group sensitivity, a greedy plan.

A uniform ratio (every group loses the same share of its channels, :func:`.pruning._search`)
treats a channel of the first, sensitive, high-resolution block like one of the last, and
counts FLOPs, which on a CPU are not time (a 1×1 convolution from 16 channels costs more per
multiply than one from 672; a depthwise convolution is bound by memory). Allocation by
sensitivity instead:

1. :func:`layer_times` — ONNX Runtime's own profile of the original (batch 1, one intra-op
   thread): the kernel time of every Conv/Gemm node, credited to its layer (fused activations
   included); :func:`predicted_time` scales each layer by the share of its input and output
   channels a plan keeps;
2. :func:`group_sensitivity` — for each group alone, at a few ratios: cut it, re-fit its
   consumer by least squares on *fit* views (as :func:`.pruning.reconstruct` will), run the rest
   of the network on *other* views and measure the KL divergence of its answers from the
   original's (and top-1 agreement). One forward pass of the original; each trial re-runs only
   the layers after the cut;
3. :func:`allocate` — greedily, take the next step (``channel_multiple`` channels of one group)
   that saves the most predicted time per unit of KL, until the predicted latency reaches
   ``original / speedup``. Single-group KLs roughly add up for small cuts, so the plan spends
   its distortion where it buys the most time.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from forwardpass.errors import Unsupported

if TYPE_CHECKING:
    import onnx
    import torch

    from forwardpass.optimize.pruning import ChannelGroup
    from forwardpass.optimize.torch_graph import GraphModule

__all__ = [
    "LayerTimes",
    "Sensitivity",
    "allocate",
    "group_sensitivity",
    "layer_times",
    "predicted_time",
]

#: Ratios each group is tried at, alone.
RATIOS = (0.25, 0.5, 0.75)


@dataclass(frozen=True, slots=True)
class LayerTimes:
    """Seconds per run (batch 1, one thread) of each layer, and of everything else."""

    layers: dict[str, float]
    other: float

    @property
    def total(self) -> float:
        return sum(self.layers.values()) + self.other


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """One group cut alone: per ratio tried, (ratio, channels kept, KL, top-1 agreement)."""

    producer: str
    channels: int
    points: tuple[tuple[float, int, float, float], ...]

    def kl(self, ratio: float) -> float:
        """KL at ``ratio``, interpolated linearly between the measured points (0 at 0)."""
        xs = [0.0, *(p[0] for p in self.points)]
        ys = [0.0, *(p[2] for p in self.points)]
        return float(np.interp(ratio, xs, ys))


def layer_times(model: onnx.ModelProto, module: GraphModule, runs: int = 20) -> LayerTimes:
    """Kernel time of each of ``module``'s layers in ONNX Runtime's profile of ``model``.

    Profiled on zeros at batch 1 with one intra-op thread (per-node kernel times depend on
    shapes, not values). A fused node (Conv+Clip, renamed for the NCHWc layout) is credited to
    the layer whose output its name carries; nodes that match no layer count as ``other``
    (they do not shrink). Time between kernels is not counted: on a loaded machine it is
    mostly other processes' — the speed-up predicted is of kernel time, and the wall-clock
    one is a little lower (measure it: ``bench/prune_bench.py``).
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="forwardpass-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        first = session.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in first.shape]
        feed = {first.name: np.zeros(shape, np.float32)}
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    by_output = {step.output: step for step in module.steps}
    node_outputs = {n.name: n.output[0] for n in model.graph.node if n.name and n.output}
    samples: dict[str, list[float]] = {}
    other = 0.0
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name.removesuffix("_kernel_time").removesuffix("_nchwc")
        step = by_output.get(node) or by_output.get(node_outputs.get(node, ""))
        while step is not None and step.layer is None and step.inputs:  # a fused activation
            step = by_output.get(step.inputs[0])
        seconds = float(event.get("dur", 0)) * 1e-6
        if step is None or step.layer is None:
            other += seconds
        else:
            samples.setdefault(step.layer, []).append(seconds)
    if not samples:
        raise Unsupported("ONNX Runtime's profile names none of the model's layers")
    # Per run: the fastest time of a layer's node(s) (a layer may run as more than one node):
    # on a shared machine, other processes only ever add time.
    layers = {k: min(v) * len(v) / runs for k, v in samples.items()}
    return LayerTimes(layers, other / runs)


def predicted_time(
    times: LayerTimes, groups: Sequence[ChannelGroup], keeps: Mapping[str, int]
) -> float:
    """Seconds per run once each group keeps ``keeps[producer]`` channels.

    A layer's time scales with the share of its output channels kept (a producer, or a
    depthwise convolution passed through) times the share of its input channels kept (a
    consumer): the projection of a block both loses inputs and, when it is pruned, outputs.
    """
    scale = dict.fromkeys(times.layers, 1.0)
    for group in groups:
        share = keeps.get(group.producer, group.channels) / group.channels
        for key in (group.producer, *group.passthrough, *(k for k, _ in group.consumers)):
            if key in scale:
                scale[key] *= share
    return times.other + sum(t * scale[k] for k, t in times.layers.items())


def group_sensitivity(
    module: GraphModule,
    groups: Sequence[ChannelGroup],
    order: Mapping[str, torch.Tensor],
    fit_inputs: torch.Tensor,
    eval_inputs: torch.Tensor,
    *,
    ratios: Sequence[float] = RATIOS,
    multiple: int = 1,
    ridge: float = 1e-3,
) -> dict[str, Sensitivity]:
    """Each group of ``groups`` cut alone at each of ``ratios`` (see the module docstring).

    ``module`` must answer logits (``module.logits``); ``order`` ranks each group's channels,
    weakest first. The consumer of a cut is re-fitted on ``fit_inputs`` only, and the KL and
    agreement are measured on ``eval_inputs`` only: a layer fitted on the views it is judged
    on (a 1280-input dense layer on 32 views) would look lossless. A group whose channels
    feed more than one consumer is not tried, and :func:`allocate` leaves it whole.
    """
    import torch
    import torch.nn.functional as F

    from forwardpass.optimize.pruning import _columns, _dense, _keeps, _refittable, _solve

    by_consumer: dict[str, list[ChannelGroup]] = {}
    for group in groups:
        for key, _ in group.consumers:
            by_consumer.setdefault(key, []).append(group)
    last_use: dict[str, int] = {}
    for index, step in enumerate(module.steps):
        for name in step.inputs:
            last_use[name] = index
    split = len(fit_inputs)
    env = dict(zip(module.input_names, [torch.cat([fit_inputs, eval_inputs])], strict=True))
    with torch.no_grad():
        teacher = module(eval_inputs)
        reference = F.log_softmax(teacher, dim=-1)
        top1 = teacher.argmax(-1)
        found: dict[str, list[tuple[float, int, float, float]]] = {}
        for index, step in enumerate(module.steps):
            args = [env[n] for n in step.inputs]
            out = module._run(step, args)
            for group in by_consumer.get(step.layer or "", []):
                block = next(b for k, b in group.consumers if k == step.layer)
                for ratio in ratios:
                    keep = _keeps([group], order, ratio, multiple)[group.producer]
                    if len(keep) == group.channels:
                        continue
                    if len(group.consumers) > 1:  # cut every consumer: not one fit each
                        continue
                    layer = copy.deepcopy(_dense(module, step.layer or ""))
                    cols = _columns(keep, block)
                    layer.weight = torch.nn.Parameter(layer.weight.detach().index_select(1, cols))
                    cut = args[0].index_select(1, cols)
                    if _refittable(module, step):
                        _solve(layer, cut[:split], out[:split], ridge)
                    saved = module.layers[step.layer or ""]
                    module.layers[step.layer or ""] = layer
                    try:
                        trial = module._run(step, [cut[split:]])
                    finally:
                        module.layers[step.layer or ""] = saved
                    rest = {k: v[split:] for k, v in env.items() if last_use.get(k, -1) > index}
                    rest[step.output] = trial
                    for later in module.steps[index + 1 :]:
                        rest[later.output] = module._run(later, [rest[n] for n in later.inputs])
                    logits = rest[module.output_names[0]]
                    kl = F.kl_div(
                        F.log_softmax(logits, dim=-1),
                        reference,
                        reduction="batchmean",
                        log_target=True,
                    )
                    agree = float((logits.argmax(-1) == top1).float().mean())
                    found.setdefault(group.producer, []).append(
                        (ratio, len(keep), max(float(kl), 0.0), agree)
                    )
            env[step.output] = out
            for name in [n for n in step.inputs if last_use.get(n) == index]:
                env.pop(name, None)
    return {
        g.producer: Sensitivity(g.producer, g.channels, tuple(found[g.producer]))
        for g in groups
        if g.producer in found
    }


def allocate(
    groups: Sequence[ChannelGroup],
    sensitivity: Mapping[str, Sensitivity],
    times: LayerTimes,
    speedup: float,
    multiple: int = 1,
) -> dict[str, int]:
    """Channels to keep per group so the predicted latency is ``times.total / speedup``.

    Greedy: each step removes ``multiple`` more channels from the group where that saves the
    most predicted time per unit of (interpolated) KL, never beyond the largest ratio measured.
    Raises :class:`Unsupported` when even every group at its largest ratio is not fast enough.
    """
    goal = times.total / speedup
    keeps = {g.producer: g.channels for g in groups}
    limits = {
        g.producer: min(p[1] for p in sensitivity[g.producer].points)
        for g in groups
        if g.producer in sensitivity and sensitivity[g.producer].points
    }
    step = max(1, multiple)
    now = predicted_time(times, groups, keeps)
    while now > goal:
        best: tuple[float, str, float] | None = None
        for group in groups:
            key = group.producer
            if key not in limits or keeps[key] - step < limits[key]:
                continue
            trial = {**keeps, key: keeps[key] - step}
            saved = now - predicted_time(times, groups, trial)
            if saved <= 0:
                continue
            curve = sensitivity[key]
            cost = curve.kl(1 - trial[key] / group.channels) - curve.kl(
                1 - keeps[key] / group.channels
            )
            value = saved / max(cost, 1e-9)
            if best is None or value > best[0]:
                best = (value, key, now - saved)
        if best is None:
            raise Unsupported(
                f"structured pruning can make this model at most {times.total / now:.2f}× "
                f"faster by the kernel-time model (every group at its largest measured ratio), "
                f"less than {speedup:.2f}×"
            )
        keeps[best[1]] -= step
        now = best[2]
    return keeps
