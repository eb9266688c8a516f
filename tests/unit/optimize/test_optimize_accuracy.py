"""Metrics on arrays whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from forwardpass.optimize.accuracy import (
    cosine_similarity,
    detect_task,
    evaluate,
    f1_macro,
    max_abs_diff,
    mean_absolute_error,
    top1_agreement,
    top_k_accuracy,
)

SCORES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
LABELS = np.array([0, 2, 1, 0])


def test_top_k_accuracy() -> None:
    assert top_k_accuracy(SCORES, LABELS, 1) == pytest.approx(0.5)
    assert top_k_accuracy(SCORES, LABELS, 2) == pytest.approx(0.75)  # row 4: label 0 is 3rd
    assert top_k_accuracy(SCORES, LABELS, 5) == pytest.approx(1.0)  # k beyond classes: all


def test_top2_counts_only_the_two_best() -> None:
    # Row 4 ranks 1 (0.5), 2 (0.3), 0 (0.2): label 0 is third.
    scores = SCORES.copy()
    assert top_k_accuracy(scores[3:], LABELS[3:], 2) == 0.0


def test_f1_macro() -> None:
    predicted = np.array([0, 0, 1, 1])
    labels = np.array([0, 1, 1, 1])
    # class 0: tp 1 fp 1 fn 0 → 2/3; class 1: tp 2 fp 0 fn 1 → 4/5.
    assert f1_macro(predicted, labels) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_regression_and_agreement_metrics() -> None:
    assert mean_absolute_error(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0])) == 1.0
    assert top1_agreement(SCORES, SCORES[:, ::-1]) == pytest.approx(0.25)
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, 1.0, 1.0])
    assert max_abs_diff(a, b) == 1.0


def test_evaluate_with_labels_measures_the_drop_in_top1() -> None:
    worse = SCORES.copy()
    worse[0] = [0.1, 0.8, 0.1]  # the one right answer of row 1 becomes wrong
    acc = evaluate({"p": SCORES}, {"p": worse}, primary="p", task="classification", labels=LABELS)
    assert acc.basis == "labels" and acc.metric == "top1"
    assert acc.value == pytest.approx(0.25) and acc.drop == pytest.approx(0.25)
    assert acc.details["original_top1"] == pytest.approx(0.5)
    assert acc.details["max_abs_diff[p]"] == pytest.approx(0.6)


def test_evaluate_without_labels_is_agreement() -> None:
    acc = evaluate({"p": SCORES}, {"p": SCORES}, primary="p", task="classification")
    assert (acc.basis, acc.metric, acc.value, acc.drop) == ("agreement", "top1_agreement", 1, 0)
    emb = evaluate(
        {"e": SCORES}, {"e": SCORES * 2}, primary="e", task="embedding", real_inputs=False
    )
    assert emb.basis == "random inputs" and emb.drop == pytest.approx(0.0, abs=1e-12)
    reg = evaluate({"y": np.array([[2.0], [4.0]])}, {"y": np.array([[2.3], [4.0]])},
                   primary="y", task="regression")  # fmt: skip
    assert reg.metric == "relative_mad" and reg.drop == pytest.approx(0.15 / 3)


def test_regression_with_labels_drop_is_relative_mae() -> None:
    ref, cand, y = np.array([1.0, 2.0]), np.array([1.0, 3.0]), np.array([1.5, 2.0])
    acc = evaluate({"y": ref}, {"y": cand}, primary="y", task="regression", labels=y)
    assert acc.value == pytest.approx(0.75) and acc.drop == pytest.approx(
        2.0
    )  # MAE 0.25 → 0.75: +200 %


def test_detect_task() -> None:
    assert detect_task(SCORES, "probabilities", None, False) == "classification"
    assert detect_task(np.ones((3, 1)), "y", None, False) == "regression"
    rng = np.random.default_rng(0)
    assert (
        detect_task(rng.standard_normal((4, 8)), "sentence_embedding", None, False) == "embedding"
    )
    assert detect_task(rng.standard_normal((4, 8)), "out", np.array([1, 2, 3, 4]), False) == (
        "classification"
    )
    assert (
        detect_task(rng.standard_normal((4, 1)), "out", np.array([0.5, 1.0]), False) == "regression"
    )


def test_neighbour_agreement_sees_a_changed_ranking() -> None:
    from forwardpass.optimize.accuracy import neighbour_agreement

    points = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert neighbour_agreement(points, points * 3) == 1.0
    swapped = points.copy()
    swapped[1] = [0.2, 0.8]  # row 1 now sits beside rows 2 and 3
    assert neighbour_agreement(points, swapped) < 1.0
