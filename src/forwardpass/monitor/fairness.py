"""Group fairness with delayed ground truth.

The :class:`FairnessMonitor` sink remembers each prediction of a model with a ``fairness``
declaration (its group: the sensitive attributes' values; whether the decision was positive)
until its ground truth arrives through :meth:`FairnessMonitor.feedback` (``POST
/v2/models/M/feedback``), or ``label_ttl_s`` passes. Labelled predictions fill a window of the
last ``window`` per model version, on which :func:`fairness_report` computes, per group, count,
selection rate, accuracy, TPR, FPR and precision, and between groups the demographic-parity
difference and ratio and the equalized-odds difference.

The definitions are fairlearn's (``MetricFrame`` with ``selection_rate``, ``accuracy_score``,
``true_positive_rate``, ``false_positive_rate``, ``precision_score``; ``demographic_parity_*``
and ``equalized_odds_difference`` with ``method="between_groups"``): a rate whose denominator
is zero is 0, as scikit-learn's confusion matrix and ``zero_division`` make it. Two departures,
both deliberate: groups with fewer than ``min_group_size`` labelled predictions are reported as
too small and left out of the between-group numbers (a group of two is not evidence of
fairness), and the ratio is ``null`` when every selection rate is 0 (fairlearn divides by 0).
Intervals are percentile bootstrap intervals over the window's rows, seeded.
"""

from __future__ import annotations

import collections
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.monitor.hub import Record
from forwardpass.monitor.settings import FairnessSettings

__all__ = ["GROUP_METRICS", "FairnessMonitor", "fairness_report", "group_counts"]

GROUP_METRICS = ("selection_rate", "accuracy", "tpr", "fpr", "precision")
DISPARITIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
)
MISSING = "(missing)"


def group_counts(codes: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, groups: int) -> Any:
    """Confusion counts per group, shape (..., groups, 4) as (tn, fp, fn, tp); ``codes`` may
    have a leading bootstrap axis (each row one resample)."""
    cell = y_true.astype(np.int64) * 2 + y_pred.astype(np.int64)
    lead = codes.shape[:-1]
    offset = np.arange(int(np.prod(lead)), dtype=np.int64).reshape(*lead, 1) * groups
    flat = ((codes + offset) * 4 + cell).reshape(-1)
    size = int(np.prod(lead)) * groups * 4
    return np.bincount(flat, minlength=size).reshape(*lead, groups, 4)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    tn, fp, fn, tp = (counts[..., i].astype(np.float64) for i in range(4))
    n = tn + fp + fn + tp
    empty = n == 0
    out = {
        "selection_rate": _ratio(tp + fp, n),
        "accuracy": _ratio(tp + tn, n),
        "tpr": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "precision": _ratio(tp, tp + fp),
    }
    # A group absent from a bootstrap resample has no rates at all (not rates of 0).
    return {k: np.where(empty, np.nan, v) for k, v in out.items()}


def _disparities(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Between-group numbers over the last axis (the groups); NaN groups are ignored."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sel = m["selection_rate"]
        lo, hi = np.nanmin(sel, axis=-1), np.nanmax(sel, axis=-1)
        tpr, fpr = m["tpr"], m["fpr"]
        eo = np.maximum(
            np.nanmax(tpr, axis=-1) - np.nanmin(tpr, axis=-1),
            np.nanmax(fpr, axis=-1) - np.nanmin(fpr, axis=-1),
        )
        return {
            "demographic_parity_difference": hi - lo,
            "demographic_parity_ratio": np.where(hi > 0, lo / np.where(hi > 0, hi, 1), np.nan),
            "equalized_odds_difference": eo,
        }


def _value(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def fairness_report(
    groups: Sequence[str],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    min_group_size: int = 30,
    bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-group metrics and between-group disparities of binary ``y_true`` / ``y_pred``."""
    names, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    counts = group_counts(codes, y_true, y_pred, len(names))
    sizes = counts.sum(axis=-1)
    metrics = _metrics(counts)
    sufficient = sizes >= min_group_size
    intervals: dict[str, np.ndarray] | None = None
    disparity_intervals: dict[str, np.ndarray] | None = None
    if bootstrap > 0 and len(codes):
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(codes), size=(bootstrap, len(codes)))
        boot = _metrics(group_counts(codes[idx], y_true[idx], y_pred[idx], len(names)))
        q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
        # nanpercentile warns on all-NaN slices (a group absent from every resample).
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            intervals = {k: np.nanpercentile(v, q, axis=0) for k, v in boot.items()}
            if sufficient.sum() >= 2:
                kept = {k: v[:, sufficient] for k, v in boot.items()}
                disparity_intervals = {
                    k: np.nanpercentile(v, q) for k, v in _disparities(kept).items()
                }
    out_groups = []
    for g, name in enumerate(names):
        entry: dict[str, Any] = {"group": str(name), "count": int(sizes[g])}
        if sufficient[g]:
            entry["metrics"] = {k: _value(metrics[k][g]) for k in GROUP_METRICS}
            if intervals is not None:
                entry["intervals"] = {
                    k: [_value(intervals[k][0, g]), _value(intervals[k][1, g])]
                    for k in GROUP_METRICS
                }
        else:
            entry["insufficient"] = (
                f"{int(sizes[g])} labelled prediction(s), fewer than the minimum "
                f"{min_group_size}: not reported"
            )
        out_groups.append(entry)
    report: dict[str, Any] = {
        "labelled": len(codes),
        "min_group_size": min_group_size,
        "groups": out_groups,
    }
    if sufficient.sum() >= 2:
        kept = {k: v[sufficient] for k, v in metrics.items()}
        disparities = _disparities(kept)
        report["disparities"] = {
            k: {
                "value": _value(disparities[k]),
                **(
                    {"interval": [_value(v) for v in disparity_intervals[k]]}
                    if disparity_intervals is not None
                    else {}
                ),
            }
            for k in DISPARITIES
        }
    else:
        report["disparities"] = None
        report["insufficient"] = (
            f"{int(sufficient.sum())} group(s) with at least {min_group_size} labelled "
            "predictions; between-group numbers need 2"
        )
    return report


@dataclass(slots=True)
class _Prediction:
    version: str
    time: float
    groups: tuple[str, ...]
    positive: tuple[bool, ...]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class FairnessMonitor:
    """The sink that joins predictions with their later ground truth, per model."""

    name = "fairness"

    def __init__(self) -> None:
        self.settings: dict[str, FairnessSettings] = {}
        self._pending: dict[str, collections.OrderedDict[str, _Prediction]] = {}
        #: (model, version) → window of (group, truth positive, prediction positive).
        self._labelled: dict[tuple[str, str], collections.deque[tuple[str, bool, bool]]] = {}
        self._lock = threading.Lock()

    def configure(self, model: str, settings: FairnessSettings | None) -> None:
        """Watch ``model`` with ``settings`` (None: stop watching it and forget its state)."""
        with self._lock:
            if settings is None:
                self.settings.pop(model, None)
                self._pending.pop(model, None)
                for key in [k for k in self._labelled if k[0] == model]:
                    del self._labelled[key]
                return
            if self.settings.get(model) != settings:
                self._pending[model] = collections.OrderedDict()
                for key in [k for k in self._labelled if k[0] == model]:
                    del self._labelled[key]
            self.settings[model] = settings

    # ------------------------------------------------------------------ sink
    def observe(self, records: list[Record]) -> None:
        settings = self.settings.get(records[0].model) if records else None
        if settings is None:
            return
        made = [(r.id, self._prediction(settings, r)) for r in records if r.ok and r.id]
        with self._lock:
            pending = self._pending.setdefault(records[0].model, collections.OrderedDict())
            for rid, p in made:
                pending[rid] = p
                pending.move_to_end(rid)
            while len(pending) > settings.max_pending:
                pending.popitem(last=False)

    def close(self) -> None:
        pass

    @staticmethod
    def _prediction(s: FairnessSettings, r: Record) -> _Prediction:
        outputs = r.outputs
        if s.prediction_output not in outputs:
            raise ValueError(
                f"prediction output {s.prediction_output!r} is not in the response "
                f"(outputs {sorted(outputs)}); ask for it, or name another prediction_output"
            )
        rows = max(1, r.stages.batch_size)
        values = np.asarray(outputs[s.prediction_output]).reshape(rows, -1)
        if values.shape[1] != 1:
            raise ValueError(
                f"prediction output {s.prediction_output!r} has {values.shape[1]} values per "
                "row; fairness needs one decision (a label or a score) per row"
            )
        column = values[:, 0]
        label = s.positive_label
        if s.threshold is not None:
            positive = tuple(bool(v >= s.threshold) for v in column.astype(np.float64))
        elif isinstance(label, str):
            positive = tuple(_text(v) == label for v in column)
        else:
            positive = tuple(float(v) == label for v in column)
        parts: list[list[str]] = []
        for name in s.sensitive:
            parts.append([_text(v) for v in np.asarray(r.inputs[name]).reshape(rows, -1)[:, 0]])
        for name in s.sensitive_parameters:
            value = r.parameters.get(name)
            parts.append([MISSING if value is None else _text(value)] * rows)
        groups = tuple(", ".join(p[i] for p in parts) for i in range(rows))
        return _Prediction(r.version, r.time, groups, positive)

    # ------------------------------------------------------------------ feedback
    def feedback(
        self, model: str, items: Sequence[Mapping[str, Any]], partial: bool = False
    ) -> dict[str, Any]:
        """Join ground truths to their predictions; all or nothing. Returns what was joined.

        ``partial`` (``serve --workers N``: the other ids may be another worker's): join the
        ids this monitor holds and return the others under ``missing`` instead of raising."""
        settings = self.settings.get(model)
        if settings is None:
            raise InvalidArgument(
                f"model {model!r} has no fairness monitoring (declare monitoring.fairness in "
                "its config to accept feedback)"
            )
        label = settings.positive_label
        now = time.time()
        with self._lock:
            pending = self._pending.setdefault(model, collections.OrderedDict())
            joined: list[tuple[str, _Prediction, tuple[bool, ...]]] = []
            missing: list[str] = []
            seen: set[str] = set()
            for i, item in enumerate(items):
                rid, truth = _item(item, i)
                if rid in seen:
                    raise InvalidArgument(f"feedback names request id {rid!r} twice")
                seen.add(rid)
                p = pending.get(rid)
                if p is None or now - p.time > settings.label_ttl_s:
                    missing.append(rid)
                    continue
                joined.append((rid, p, _truths(truth, label, len(p.groups), rid)))
            if missing and not partial:
                raise NotFound(
                    f"no prediction of model {model!r} awaits ground truth for request id(s) "
                    + ", ".join(repr(m) for m in missing)
                    + " (unknown, expired or already labelled)"
                )
            for rid, p, truths in joined:
                del pending[rid]
                window = self._labelled.get((model, p.version))
                if window is None:
                    window = self._labelled[(model, p.version)] = collections.deque(
                        maxlen=settings.window
                    )
                for g, t, y in zip(p.groups, truths, p.positive, strict=True):
                    window.append((g, t, y))
        if partial:
            return {"joined": len(joined), "missing": missing}
        return {"joined": len(joined)}

    def pending_count(self, model: str) -> int:
        return len(self._pending.get(model, ()))

    def report(self, model: str, intervals: bool = True) -> dict[str, dict[str, Any]]:
        """Per version: the fairness report of its window (``intervals=False``: without the
        bootstrap, as a Prometheus scrape wants it)."""
        settings = self.settings.get(model)
        if settings is None:
            return {}
        with self._lock:
            windows = {v: list(w) for (m, v), w in self._labelled.items() if m == model}
        out = {}
        for version, rows in sorted(windows.items()):
            groups = [g for g, _, _ in rows]
            out[version] = fairness_report(
                groups,
                np.array([t for _, t, _ in rows], dtype=bool),
                np.array([y for _, _, y in rows], dtype=bool),
                min_group_size=settings.min_group_size,
                bootstrap=settings.bootstrap if intervals else 0,
                confidence=settings.confidence,
                seed=settings.seed,
            )
            out[version]["window"] = settings.window
        return out


def _item(item: Any, i: int) -> tuple[str, Any]:
    if not isinstance(item, Mapping):
        raise InvalidArgument(f"feedback[{i}] must be an object with 'id' and 'truth'")
    rid = item.get("id")
    if not isinstance(rid, str) or not rid:
        raise InvalidArgument(f"feedback[{i}]: 'id' must be a non-empty string, got {rid!r}")
    if "truth" not in item:
        raise InvalidArgument(f"feedback[{i}] (id {rid!r}) has no 'truth'")
    unknown = sorted(set(item) - {"id", "truth"})
    if unknown:
        raise InvalidArgument(f"feedback[{i}] (id {rid!r}): unknown key(s) {unknown}")
    return rid, item["truth"]


def _truths(truth: Any, label: str | float, rows: int, rid: str) -> tuple[bool, ...]:
    """Each row's truth as "is the positive label"; a wrong type is a 400 naming the id."""
    values = truth if isinstance(truth, list) else [truth]
    if rows > 1 and not isinstance(truth, list):
        raise InvalidArgument(
            f"request {rid!r} had {rows} rows: its truth must be a list of {rows} values"
        )
    if len(values) != rows:
        raise InvalidArgument(
            f"request {rid!r} had {rows} row(s), its truth has {len(values)} value(s)"
        )
    out = []
    for v in values:
        if isinstance(label, str):
            if not isinstance(v, str):
                raise InvalidArgument(
                    f"truth for request {rid!r} must be a string (labels like {label!r}), got {v!r}"
                )
            out.append(v == label)
        else:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidArgument(
                    f"truth for request {rid!r} must be a number (labels like {label:g}), got {v!r}"
                )
            out.append(float(v) == label)
    return tuple(out)
