"""Training a network on a teacher's answers: the fine-tune after pruning, and distillation.

The teacher's outputs are computed once (ONNX Runtime, on the original file), so any model
ONNX Runtime runs can teach. What the student learns depends on what the teacher outputs
(:func:`output_kind`):

- probabilities (a final Softmax) or log-probabilities (a final LogSoftmax): the student's
  logits learn the teacher's temperature-softened distribution, ``T² · KL(softmax(t/T) ‖
  softmax(s/T))`` with ``t = log p`` (Hinton et al., 2015); with labels, plus cross-entropy;
- logits of a classifier: the same, with ``t`` the logits themselves;
- anything else (regression, embeddings): mean squared error to the teacher's outputs.

Training is seeded and single-threaded-friendly; it stops after ``epochs`` or ``max_steps``.
Given *validation* inputs and their teacher targets, it is judged on them every
``validate_every`` steps and the best state seen is what it returns (early stopping: a
fine-tune on a few hundred photos' views can fit those views and drift from the teacher
everywhere else); for a classifier "best" is top-1 agreement with the teacher, loss breaking
ties, otherwise the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

__all__ = ["FitSettings", "OutputKind", "fit", "kept_judgement", "output_kind", "teacher_targets"]

OutputKind = Literal["probabilities", "log_probabilities", "logits", "values"]
_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class FitSettings:
    """How long and how hard to train (defaults suit small models on a few thousand samples)."""

    epochs: int = 20
    max_steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    temperature: float = 3.0
    #: Weight of the cross-entropy to labels, when there are labels (the KL term weighs 1).
    label_weight: float = 0.5
    seed: int = 0
    #: Steps between judgements on the validation data, when there is any.
    validate_every: int = 25


def output_kind(model: onnx.ModelProto, output: str, classification: bool) -> OutputKind:
    """What ``output`` of ``model`` holds, judged from the node producing it."""
    producer = next((n for n in model.graph.node if output in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        return "probabilities"
    if producer is not None and producer.op_type == "LogSoftmax":
        return "log_probabilities"
    return "logits" if classification else "values"


def teacher_targets(outputs: np.ndarray, kind: OutputKind) -> np.ndarray:
    """What the student's pre-softmax output is trained towards (logits or raw values)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if kind == "probabilities":
        return np.log(np.maximum(outputs, _EPS)).astype(np.float32)
    return outputs


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    kind: OutputKind,
    temperature: float,
    labels: torch.Tensor | None = None,
    label_weight: float = 0.5,
) -> torch.Tensor:
    """The loss of the module docstring for one batch."""
    import torch.nn.functional as F

    if kind == "values":
        return F.mse_loss(student, teacher)
    t = temperature
    soft = F.log_softmax(teacher / t, dim=-1)
    loss = F.kl_div(
        F.log_softmax(student / t, dim=-1), soft, reduction="batchmean", log_target=True
    )
    loss = loss * t * t
    if labels is not None:
        loss = loss + label_weight * F.cross_entropy(student, labels)
    return loss


def fit(
    student: nn.Module,
    inputs: Sequence[np.ndarray],
    targets: np.ndarray,
    kind: OutputKind,
    settings: FitSettings,
    labels: np.ndarray | None = None,
    validation: tuple[Sequence[np.ndarray], np.ndarray] | None = None,
    history: list[tuple[int, float, float]] | None = None,
) -> list[float]:
    """Train ``student`` (its output: logits or values) towards ``targets``; loss per epoch.

    BatchNorm statistics and dropout stay as in eval mode: fine-tuning on a few hundred
    samples should not move a pruned model's normalization. With ``validation`` (inputs,
    teacher targets), ``student`` ends in the best state judged on it (module docstring),
    which may be the one it started in; ``history`` (when given) receives each judgement:
    (step, top-1 agreement — nan for values —, loss).
    """

    import torch

    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
    ys = torch.from_numpy(np.ascontiguousarray(targets))
    label_tensor = None if labels is None else torch.from_numpy(np.asarray(labels, np.int64))
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.learning_rate)
    steps_per_epoch = max(1, -(-len(ys) // settings.batch_size))
    total_steps = min(settings.epochs * steps_per_epoch, settings.max_steps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    student.eval()  # gradients flow in eval mode; no statistics move
    losses: list[float] = []
    judge = None if validation is None else _Judge(student, validation, kind, settings)
    step = 0
    while step < total_steps:
        order = torch.randperm(len(ys), generator=generator)
        running, seen = 0.0, 0
        for start in range(0, len(ys), settings.batch_size):
            if step >= total_steps:
                break
            index = order[start : start + settings.batch_size]
            optimizer.zero_grad()
            out = student(*(x[index] for x in xs))
            batch_labels = None if label_tensor is None else label_tensor[index]
            loss = distillation_loss(
                out, ys[index], kind, settings.temperature, batch_labels, settings.label_weight
            )
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.item()) * len(index)
            seen += len(index)
            step += 1
            if judge is not None and (step % settings.validate_every == 0 or step == total_steps):
                judge.judge(step)
        losses.append(running / max(seen, 1))
    if judge is not None:
        judge.restore()
        if history is not None:
            history.extend(judge.history)
    return losses


def _rank(agreement: float, loss: float) -> tuple[float, float]:
    """How :func:`fit` orders its judgements, higher better: top-1 agreement, then the lower
    loss; the loss alone where there is no agreement (values: nan)."""
    return (-loss, 0.0) if math.isnan(agreement) else (agreement, -loss)


def kept_judgement(history: Sequence[tuple[int, float, float]]) -> tuple[int, float, float]:
    """The judgement (step, agreement, loss) whose state :func:`fit` ended in: the first of
    the best."""
    return max(history, key=lambda h: _rank(h[1], h[2]))


class _Judge:
    """Scores ``student`` on validation data and keeps a copy of its best state."""

    def __init__(
        self,
        student: nn.Module,
        validation: tuple[Sequence[np.ndarray], np.ndarray],
        kind: OutputKind,
        settings: FitSettings,
    ) -> None:
        import copy

        import torch

        self.student, self.kind, self.settings = student, kind, settings
        self.inputs = [torch.from_numpy(np.ascontiguousarray(x)) for x in validation[0]]
        self.targets = torch.from_numpy(np.ascontiguousarray(validation[1]))
        self.best = self._score()
        self.state = copy.deepcopy(student.state_dict())
        #: (step, top-1 agreement or nan, loss) of each judgement, the start included.
        self.history = [(0, *self.best)]

    def _score(self) -> tuple[float, float]:
        import torch

        outs = []
        with torch.no_grad():
            for i in range(0, len(self.targets), self.settings.batch_size):
                outs.append(
                    self.student(*(x[i : i + self.settings.batch_size] for x in self.inputs))
                )
            out = torch.cat(outs)
            loss = float(distillation_loss(out, self.targets, self.kind, self.settings.temperature))
        if self.kind == "values":
            return float("nan"), loss
        return float((out.argmax(1) == self.targets.argmax(1)).float().mean()), loss

    def judge(self, step: int) -> None:
        import copy

        agreement, loss = self._score()
        self.history.append((step, agreement, loss))
        if _rank(agreement, loss) > _rank(*self.best):
            self.best = (agreement, loss)
            self.state = copy.deepcopy(self.student.state_dict())

    def restore(self) -> None:
        self.student.load_state_dict(self.state)
