"""How much a candidate's answers differ from the original's.

With labels, task accuracy: top-1/top-5 accuracy and macro F1 for classification, mean absolute
error for regression. Without labels, agreement with the original: top-1 agreement for
classifiers, cosine similarity for embeddings, relative mean absolute difference for
regressors; the maximum absolute difference of every output is always recorded.

The *drop* compared to ``--max-accuracy-drop`` is in the primary metric's own units:

==========================  =================  ===============================================
basis                       primary metric     drop
==========================  =================  ===============================================
labels, classification      top-1 accuracy     original top-1 − candidate top-1
labels, regression          MAE                (candidate MAE − original MAE) / original MAE
agreement, classification   top-1 agreement    1 − agreement
agreement, embedding        mean cosine        1 − mean cosine similarity (nearest-neighbour
                                               agreement recorded beside it)
agreement, regression       relative MAD       mean |cand − orig| / mean |orig|
==========================  =================  ===============================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "Accuracy",
    "Task",
    "cosine_similarity",
    "detect_task",
    "evaluate",
    "f1_macro",
    "max_abs_diff",
    "mean_absolute_error",
    "neighbour_agreement",
    "top1_agreement",
    "top_k_accuracy",
]

Task = Literal["classification", "regression", "embedding"]
_EPS = 1e-12


def _rows(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    return array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of rows whose label is among the ``k`` highest scores."""
    scores = _rows(scores)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels).reshape(-1, 1), axis=1)))


def f1_macro(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean over the classes present (in labels or predictions) of F1."""
    predicted, labels = np.asarray(predicted).reshape(-1), np.asarray(labels).reshape(-1)
    scores = []
    for cls in np.union1d(predicted, labels):
        tp = float(np.sum((predicted == cls) & (labels == cls)))
        fp = float(np.sum((predicted == cls) & (labels != cls)))
        fn = float(np.sum((predicted != cls) & (labels == cls)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(scores)) if scores else 0.0


def mean_absolute_error(predicted: np.ndarray, target: np.ndarray) -> float:
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(target), -1)
    target = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    return float(np.mean(np.abs(predicted - target)))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of rows where both put the highest score on the same class."""
    return float(np.mean(_rows(reference).argmax(1) == _rows(candidate).argmax(1)))


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (rows of zeros on both sides count as identical)."""
    a, b = _rows(reference), _rows(candidate)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    sims = np.sum(a * b, axis=1) / np.maximum(na * nb, _EPS)
    return np.where((na < _EPS) & (nb < _EPS), 1.0, sims)


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of rows whose nearest other row (cosine) is the same under both embeddings."""
    ref, cand = _rows(reference).astype(np.float64), _rows(candidate).astype(np.float64)
    if ref.shape[0] < 2:
        return 1.0

    def nearest(x: np.ndarray) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argmax(similarity, axis=1)

    return float(np.mean(nearest(ref) == nearest(cand)))


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))
    return float(diff.max()) if diff.size else 0.0


def detect_task(
    output: np.ndarray, name: str, labels: np.ndarray | None, has_labels_file: bool
) -> Task:
    """Classification, regression or embedding, from the labels and the output's shape."""
    rows = _rows(output)
    width = rows.shape[1]
    if labels is not None:
        integral = np.issubdtype(np.asarray(labels).dtype, np.integer)
        return "classification" if integral and width > 1 else "regression"
    if width == 1:
        return "regression"
    if has_labels_file or any(w in name.lower() for w in ("prob", "logit", "class", "score")):
        return "classification"
    if np.all(rows >= 0) and np.allclose(rows.sum(1), 1.0, atol=1e-3):
        return "classification"
    return "embedding"


@dataclass(frozen=True, slots=True)
class Accuracy:
    """One candidate's accuracy against the original (see the module docstring)."""

    task: Task
    basis: Literal["labels", "agreement", "random inputs"]
    metric: str
    value: float
    drop: float
    #: Every metric computed (top-5, F1, cosine min, max abs diff per output ...).
    details: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _labelled(
    task: Task, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray
) -> tuple[str, float, float, dict[str, float]]:
    if task == "classification":
        details = {
            "top1": top_k_accuracy(cand, labels, 1),
            "top5": top_k_accuracy(cand, labels, 5),
            "f1_macro": f1_macro(_rows(cand).argmax(1), labels),
            "original_top1": top_k_accuracy(ref, labels, 1),
            "original_top5": top_k_accuracy(ref, labels, 5),
        }
        return "top1", details["top1"], details["original_top1"] - details["top1"], details
    mae, ref_mae = mean_absolute_error(cand, labels), mean_absolute_error(ref, labels)
    details = {"mae": mae, "original_mae": ref_mae}
    return "mae", mae, (mae - ref_mae) / max(ref_mae, _EPS), details


def _agreement(
    task: Task, ref: np.ndarray, cand: np.ndarray
) -> tuple[str, float, float, dict[str, float]]:
    cosine = cosine_similarity(ref, cand)
    details = {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}
    if task == "classification":
        value = top1_agreement(ref, cand)
        details["top1_agreement"] = value
        return "top1_agreement", value, 1.0 - value, details
    if task == "embedding":
        # Retrieval is what embeddings are for: record whether each sample's nearest
        # neighbour among the others is still the same one.
        details["neighbour_agreement"] = neighbour_agreement(ref, cand)
        return "cosine_mean", details["cosine_mean"], 1.0 - details["cosine_mean"], details
    scale = float(np.mean(np.abs(np.asarray(ref, np.float64)))) + _EPS
    value = mean_absolute_error(cand, ref) / scale
    details["relative_mad"] = value
    return "relative_mad", value, value, details


def evaluate(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    primary: str,
    task: Task,
    labels: np.ndarray | None = None,
    real_inputs: bool = True,
) -> Accuracy:
    """Compare ``candidate``'s outputs with ``reference``'s on the same inputs."""
    ref, cand = reference[primary], candidate[primary]
    if labels is not None:
        metric, value, drop, details = _labelled(task, ref, cand, labels)
        basis: Literal["labels", "agreement", "random inputs"] = "labels"
    else:
        metric, value, drop, details = _agreement(task, ref, cand)
        basis = "agreement" if real_inputs else "random inputs"
    for name in reference:
        details[f"max_abs_diff[{name}]"] = max_abs_diff(reference[name], candidate[name])
    # A negative drop is a candidate that does better than the original on this data.
    return Accuracy(task, basis, metric, value, drop, details)
