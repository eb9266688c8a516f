"""The fairness numbers against fairlearn's, feedback joins and their errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.monitor.fairness import FairnessMonitor, fairness_report
from forwardpass.monitor.hub import Record, Stages
from forwardpass.monitor.settings import FairnessSettings
from forwardpass.types import Tensor


def _data(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    y_true = rng.random(n) < np.where(groups == "a", 0.6, 0.4)
    flip = rng.random(n) < np.where(groups == "c", 0.35, 0.15)
    y_pred = np.where(flip, ~y_true, y_true)
    return groups, y_true.astype(int), y_pred.astype(int)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numbers_equal_fairlearn(seed: int) -> None:
    groups, y_true, y_pred = _data(seed)
    report = fairness_report(groups, y_true, y_pred, min_group_size=1, bootstrap=0)
    frame = MetricFrame(
        metrics={
            "selection_rate": selection_rate,
            "accuracy": accuracy_score,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "precision": lambda t, p: precision_score(t, p, zero_division=0),
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    by_group = frame.by_group
    for g in report["groups"]:
        assert g["count"] == int((groups == g["group"]).sum())
        for metric, value in g["metrics"].items():
            assert value == pytest.approx(by_group.loc[g["group"], metric], abs=1e-9)
    d = report["disparities"]
    kw = {"sensitive_features": groups}
    expected = {
        "demographic_parity_difference": demographic_parity_difference(y_true, y_pred, **kw),
        "demographic_parity_ratio": demographic_parity_ratio(y_true, y_pred, **kw),
        "equalized_odds_difference": equalized_odds_difference(y_true, y_pred, **kw),
    }
    for metric, value in expected.items():
        assert d[metric]["value"] == pytest.approx(value, abs=1e-9)


def test_zero_denominators_follow_fairlearn() -> None:
    # Group "b" has no true positives and predicts nothing positive: TPR and precision are 0.
    groups = np.array(["a"] * 4 + ["b"] * 4)
    y_true = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    y_pred = np.array([1, 0, 1, 0, 0, 0, 0, 0])
    report = fairness_report(groups, y_true, y_pred, min_group_size=1, bootstrap=0)
    b = report["groups"][1]["metrics"]
    assert b["tpr"] == true_positive_rate(y_true[4:], y_pred[4:], pos_label=1) == 0
    assert b["precision"] == 0
    assert report["disparities"]["equalized_odds_difference"]["value"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=groups), abs=1e-9
    )


def test_small_groups_are_reported_as_such_not_as_fair() -> None:
    groups, y_true, y_pred = _data(3, n=200)
    groups = groups.astype(object)
    groups[:5] = "tiny"
    report = fairness_report(groups, y_true, y_pred, min_group_size=10, bootstrap=0)
    tiny = next(g for g in report["groups"] if g["group"] == "tiny")
    assert "metrics" not in tiny and "fewer than the minimum 10" in tiny["insufficient"]
    # The between-group numbers leave the tiny group out: they equal fairlearn's without it.
    keep = groups != "tiny"
    assert report["disparities"]["demographic_parity_difference"]["value"] == pytest.approx(
        demographic_parity_difference(y_true[keep], y_pred[keep], sensitive_features=groups[keep])
    )
    one = fairness_report(["a"] * 50 + ["b"] * 3, [1] * 53, [1] * 53, min_group_size=10)
    assert one["disparities"] is None and "need 2" in one["insufficient"]


def test_bootstrap_intervals_are_seeded_and_cover_the_value() -> None:
    groups, y_true, y_pred = _data(4, n=1000)
    first = fairness_report(groups, y_true, y_pred, min_group_size=1, bootstrap=300, seed=7)
    again = fairness_report(groups, y_true, y_pred, min_group_size=1, bootstrap=300, seed=7)
    assert first == again
    for g in first["groups"]:
        for metric, (lo, hi) in g["intervals"].items():
            assert lo <= g["metrics"][metric] <= hi
    d = first["disparities"]["demographic_parity_difference"]
    assert d["interval"][0] <= d["value"] <= d["interval"][1]
    other = fairness_report(groups, y_true, y_pred, min_group_size=1, bootstrap=300, seed=8)
    assert other != first


# ---------------------------------------------------------------------- the monitor + feedback
SETTINGS = FairnessSettings(
    sensitive=("sex",),
    prediction_output="score",
    positive_label=1,
    threshold=0.5,
    min_group_size=1,
    bootstrap=0,
    sensitive_parameters=("region",),
)


def _record(rid: str, sex: float, score: float, region: str | None = "north") -> Record:
    return Record(
        id=rid,
        time=time.time(),
        model="m",
        version="1",
        status="OK",
        error="",
        total_ns=1000,
        stages=Stages(batch_size=1),
        inputs={"sex": np.array([[sex]], np.float32)},
        parameters={} if region is None else {"region": region},
        tensors=[Tensor("score", DataType.FP32, np.array([[score]], np.float32))],
    )


def test_feedback_joins_by_id_and_fills_the_window() -> None:
    monitor = FairnessMonitor()
    monitor.configure("m", SETTINGS)
    monitor.observe([_record("r1", 0, 0.9), _record("r2", 1, 0.2), _record("r3", 1, 0.7, None)])
    assert monitor.pending_count("m") == 3
    assert monitor.feedback("m", [{"id": "r1", "truth": 1}, {"id": "r2", "truth": 1}]) == {
        "joined": 2
    }
    monitor.feedback("m", [{"id": "r3", "truth": 0.0}])
    report = monitor.report("m")["1"]
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"0, north", "1, north", "1, (missing)"}
    assert groups["0, north"]["metrics"]["tpr"] == 1.0
    assert groups["1, north"]["metrics"]["tpr"] == 0.0
    assert groups["1, (missing)"]["metrics"]["fpr"] == 1.0
    with pytest.raises(NotFound, match="'r1'"):  # already labelled
        monitor.feedback("m", [{"id": "r1", "truth": 1}])


def test_feedback_errors() -> None:
    monitor = FairnessMonitor()
    monitor.configure("m", SETTINGS)
    monitor.observe([_record("r1", 0, 0.9)])
    with pytest.raises(InvalidArgument, match="no fairness monitoring"):
        monitor.feedback("other", [{"id": "r1", "truth": 1}])
    with pytest.raises(NotFound, match="'nope'"):
        monitor.feedback("m", [{"id": "r1", "truth": 1}, {"id": "nope", "truth": 1}])
    assert monitor.pending_count("m") == 1  # all or nothing: r1 still waits
    with pytest.raises(InvalidArgument, match="must be a number"):
        monitor.feedback("m", [{"id": "r1", "truth": "yes"}])
    with pytest.raises(InvalidArgument, match="must be a number"):
        monitor.feedback("m", [{"id": "r1", "truth": True}])
    with pytest.raises(InvalidArgument, match="'id' must be a non-empty string"):
        monitor.feedback("m", [{"truth": 1}])
    with pytest.raises(InvalidArgument, match="has no 'truth'"):
        monitor.feedback("m", [{"id": "r1"}])
    with pytest.raises(InvalidArgument, match="1 row"):
        monitor.feedback("m", [{"id": "r1", "truth": [1, 0]}])
    strings = FairnessSettings(sensitive=("sex",), prediction_output="score", positive_label="yes")
    monitor.configure("s", strings)
    rec = _record("s1", 0, 0.9)
    rec.model = "s"
    monitor.observe([rec])
    with pytest.raises(InvalidArgument, match="must be a string"):
        monitor.feedback("s", [{"id": "s1", "truth": 1}])


def test_expired_predictions_are_not_joined() -> None:
    monitor = FairnessMonitor()
    monitor.configure("m", FairnessSettings(("sex",), "score", 1, 0.5, label_ttl_s=1.0))
    old = _record("old", 0, 0.9)
    old.time -= 10
    monitor.observe([old])
    with pytest.raises(NotFound, match=r"'old'.*expired"):
        monitor.feedback("m", [{"id": "old", "truth": 1}])


def test_a_prediction_output_with_many_values_raises_for_the_hub_to_disable() -> None:
    monitor = FairnessMonitor()
    monitor.configure("m", SETTINGS)
    rec = _record("r", 0, 0.9)
    rec.tensors = [Tensor("score", DataType.FP32, np.zeros((1, 3), np.float32))]
    with pytest.raises(ValueError, match="3 values per row"):
        monitor.observe([rec])
