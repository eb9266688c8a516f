"""Block-wise reconstruction: train each pruned block to give what the original's block gave.

After a cut and a least-squares re-fit of the layer after it (:func:`.pruning.reconstruct`),
the rest of a pruned block (its expansion, depthwise convolution, BatchNorms, projection) still
carries the original's weights, tuned for channels that are gone. Fine-tuning the whole network
end to end on a few hundred photos' views fits those views' logits and nothing else
(bench/README.md: new-view agreement fell 84 % → 67 %). Block by block (BRECQ, Li et al.,
2021; "cross distillation", Bai et al., 2020) each block has thousands of targets per view —
every activation at its output, not one 1000-way distribution — and a forward and backward pass
costs only that block:

1. :func:`segments` cuts the graph where one activation alone is alive (the output of an
   inverted-residual block, after its skip Add) *and* has the same shape in both networks: the
   graph between two such cuts is a block with one input and one output;
2. walking both networks over the views together, the original's block input and output and
   the pruned network's block input are cached; a block that holds a changed layer is trained
   with Adam (cosine schedule) so that its output *on the pruned network's own input* matches
   the original's output on the original's input — each block so corrects the errors of the
   blocks before it, not only its own cut;
3. its error (mean squared error over the mean square of the target) is measured on views kept
   aside, before and after; a block that did not get better on them is put back as it was.

Runs in torch on the converted :class:`~.torch_graph.GraphModule`; the Softmax at the end is
skipped (logits are compared, as in the fine-tune).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forwardpass.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

    from forwardpass.optimize.torch_graph import GraphModule

__all__ = ["BlockFit", "BlockSettings", "Segment", "reconstruct_blocks", "segments"]

#: Views run at once when caching activations (no gradients).
_CHUNK = 32


@dataclass(frozen=True, slots=True)
class Segment:
    """Steps ``start … stop-1`` of a graph: one activation in (``input``), one out."""

    start: int
    stop: int
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class BlockSettings:
    """How long and how hard each block is trained."""

    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 5e-4
    #: Share of the views kept aside to judge each block (never trained on).
    held_out: float = 0.125
    #: Train every block, not only those holding a changed layer (the later, whole blocks then
    #: also learn to undo what reaches them).
    all_blocks: bool = False
    seed: int = 0


@dataclass(frozen=True, slots=True)
class BlockFit:
    """One block trained: its output tensor, and its relative error on the views kept aside."""

    output: str
    steps: int
    error_before: float
    error_after: float
    #: False when training did not lower the error on the views kept aside (weights restored).
    kept: bool = True


def segments(module: GraphModule, other: GraphModule | None = None) -> list[Segment]:
    """``module``'s steps cut into single-input, single-output blocks (see the module docstring).

    With ``other`` (the same graph, pruned), a cut is only made where the activation has the same
    shape in both. Both need :meth:`~.torch_graph.GraphModule.record_shapes` first.
    """
    if len(module.input_names) != 1 or len(module.output_names) != 1:
        raise InvalidArgument("block-wise reconstruction takes a graph with one input and output")
    steps = module.steps
    last_use = {name: len(steps) for name in module.output_names}
    produced = {name: -1 for name in module.input_names}
    for index, step in enumerate(steps):
        produced[step.output] = index
        for name in step.inputs:
            last_use[name] = max(last_use.get(name, -1), index)
    found, start, current = [], 0, module.input_names[0]
    for index, step in enumerate(steps):
        alive = [n for n, at in produced.items() if at <= index < last_use.get(n, -1)]
        final = index == len(steps) - 1
        if not final and (len(alive) != 1 or alive[0] != step.output):
            continue
        if not final and other is not None:
            if module.shapes.get(step.output) != other.shapes.get(step.output):
                continue
        found.append(Segment(start, index + 1, current, step.output))
        start, current = index + 1, step.output
    return found


def run_segment(module: GraphModule, segment: Segment, x: torch.Tensor) -> torch.Tensor:
    """The output of ``segment`` of ``module`` for its input ``x`` (a final Softmax skipped)."""
    env = module.run_steps({segment.input: x}, segment.start, segment.stop, logits=True)
    return env[segment.output]


def _layers(module: GraphModule, segment: Segment) -> list[str]:
    keys = [s.layer for s in module.steps[segment.start : segment.stop] if s.layer]
    return list(dict.fromkeys(keys))


def _changed(original: GraphModule, pruned: GraphModule, keys: list[str]) -> bool:
    import torch

    for key in keys:
        ours = dict(pruned.layers[key].named_parameters())
        for name, theirs in original.layers[key].named_parameters():
            mine = ours.get(name)
            if mine is None or mine.shape != theirs.shape or not torch.equal(mine, theirs):
                return True
    return False


def _error(student: torch.Tensor, target: torch.Tensor) -> float:
    return float(((student - target) ** 2).mean() / (target**2).mean().clamp_min(1e-12))


def _cached(module: GraphModule, segment: Segment, x: torch.Tensor) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return torch.cat(
            [run_segment(module, segment, x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)]
        )


def reconstruct_blocks(
    original: GraphModule,
    pruned: GraphModule,
    inputs: torch.Tensor,
    settings: BlockSettings | None = None,
) -> list[BlockFit]:
    """Train ``pruned``'s changed blocks, in order, to reproduce ``original``'s; one fit each.

    ``inputs`` are the views (model inputs, samples first); shapes are recorded on the first.
    ``pruned`` is changed in place; ``original`` is not.
    """
    import torch

    settings = settings or BlockSettings()
    if settings.steps < 1 or settings.batch_size < 1 or not 0.0 < settings.held_out < 1.0:
        raise InvalidArgument(
            f"block settings need steps, batch size >= 1 and 0 < held_out < 1 ({settings})"
        )
    count = len(inputs)
    aside = max(1, round(count * settings.held_out))
    if count - aside < 1:
        raise InvalidArgument(f"block-wise reconstruction needs at least 2 views, not {count}")
    original.record_shapes(inputs[:1])
    pruned.record_shapes(inputs[:1])
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(count, generator=generator)
    train, held = order[aside:], order[:aside]
    fits: list[BlockFit] = []
    ours = theirs = inputs
    for segment in segments(original, pruned):
        target = _cached(original, segment, theirs)
        keys = _layers(pruned, segment)
        if keys and (settings.all_blocks or _changed(original, pruned, keys)):
            fits.append(_train(pruned, segment, keys, ours, target, train, held, settings))
        ours, theirs = _cached(pruned, segment, ours), target
    return fits


def _train(
    pruned: GraphModule,
    segment: Segment,
    keys: list[str],
    inputs: torch.Tensor,
    target: torch.Tensor,
    train: torch.Tensor,
    held: torch.Tensor,
    settings: BlockSettings,
) -> BlockFit:
    import torch

    params = [p for key in keys for p in pruned.layers[key].parameters()]
    saved = {key: copy.deepcopy(pruned.layers[key].state_dict()) for key in keys}
    with torch.no_grad():
        before = _error(run_segment(pruned, segment, inputs[held]), target[held])
    optimizer = torch.optim.Adam(params, lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    generator = torch.Generator().manual_seed(settings.seed + segment.start)
    scale = (target[train] ** 2).mean().clamp_min(1e-12)
    for _ in range(settings.steps):
        pick = train[torch.randint(len(train), (settings.batch_size,), generator=generator)]
        optimizer.zero_grad()
        out = run_segment(pruned, segment, inputs[pick])
        loss = ((out - target[pick]) ** 2).mean() / scale
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        after = _error(run_segment(pruned, segment, inputs[held]), target[held])
    kept = after < before
    if not kept:
        for key, state in saved.items():
            pruned.layers[key].load_state_dict(state)
    return BlockFit(segment.output, settings.steps, before, after if kept else before, kept)
