"""Distillation: student specs, the proof on digits, and a clear answer without torch."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.optimize import read_provenance
from forwardpass.optimize.distill import DistillOptions, distill, parse_student
from forwardpass.optimize.measure import MeasureSettings
from forwardpass.optimize.training import FitSettings

DIGITS = Path(__file__).resolve().parents[3] / "src" / "forwardpass" / "models" / "digits"


@pytest.fixture
def digits_split(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A repository with the digits model; unlabelled train .npy; held-out .npz with labels."""
    split = json.loads((DIGITS / "TRAINING.json").read_text())["split"]
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, _, y_test = train_test_split(
        x,
        digits.target,
        test_size=split["test_fraction"],
        random_state=split["random_state"],
        stratify=digits.target,
    )
    repo = tmp_path / "repo"
    shutil.copytree(DIGITS, repo / "digits")
    np.save(tmp_path / "train.npy", x_train)
    np.savez(tmp_path / "heldout.npz", image=x_test, labels=y_test)
    return repo, tmp_path / "train.npy", tmp_path / "heldout.npz"


def test_student_specs_parse_and_bad_ones_are_explained() -> None:
    assert parse_student("mlp:128,64").dense == (128, 64)
    cnn = parse_student("cnn:8,16,p/64")
    assert cnn.kind == "cnn" and cnn.convs == (8, 16, "p") and cnn.dense == (64,)
    assert parse_student("cnn:8,g/").dense == ()
    for bad in ("rnn:4", "mlp:a", "cnn:/32", "mlp:0"):
        with pytest.raises(InvalidArgument, match="student"):
            parse_student(bad)


@pytest.mark.slow
def test_proof_distilled_student_3x_smaller_within_2_points(
    digits_split: tuple[Path, Path, Path],
) -> None:
    """PROOF: ≥ 3× fewer parameters and bytes, held-out accuracy within 2 points."""
    pytest.importorskip("torch").set_num_threads(1)
    repo, train, heldout = digits_split
    options = DistillOptions(
        "digits",
        repo,
        "cnn:4,8,p/16",
        train,
        validation=heldout,
        fit=FitSettings(epochs=40, max_steps=10**9, learning_rate=1e-2, temperature=3.0),
        measure=MeasureSettings(
            warmup=2, iterations=50, max_seconds=0.3, batch_sizes=(1, 64), isolate=False
        ),
    )
    result = distill(options)
    teacher, student = result.report.candidates
    assert teacher.parameters and student.parameters and teacher.size_bytes and student.size_bytes
    assert teacher.parameters / student.parameters >= 3
    assert teacher.size_bytes / student.size_bytes >= 3
    assert student.accuracy is not None and student.accuracy.metric == "top1"
    teacher_top1 = student.accuracy.details["original_top1"]
    assert teacher_top1 - student.accuracy.value <= 0.02
    print(
        f"teacher {teacher.parameters} params {teacher.size_bytes} B top1 {teacher_top1:.4f}; "
        f"student {student.parameters} params {student.size_bytes} B top1 "
        f"{student.accuracy.value:.4f}"
    )
    # Written as version 2 beside the teacher, with the optimize report format.
    assert result.version_dir == repo / "digits" / "2"
    provenance = read_provenance(result.version_dir)
    assert provenance is not None and provenance.method == "distillation"
    assert provenance.optimized_from == 1
    report = json.loads((result.version_dir / "optimization.json").read_text())
    assert report["measurement"]["distillation"]["ratios"]["parameters"] >= 3
    assert (repo / "digits" / "1" / "model.onnx").read_bytes() == (
        DIGITS / "1" / "model.onnx"
    ).read_bytes()


def test_over_budget_student_is_not_written(digits_split: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("torch").set_num_threads(1)
    repo, train, heldout = digits_split
    options = DistillOptions(
        "digits",
        repo,
        "mlp:2",
        train,
        validation=heldout,
        max_accuracy_drop=0.0,
        fit=FitSettings(epochs=1),
        measure=MeasureSettings(iterations=5, max_seconds=0.1, batch_sizes=(1,), isolate=False),
        report_dir=repo.parent / "report",
    )
    result = distill(options)
    assert result.version_dir is None and not (repo / "digits" / "2").exists()
    assert "kept the teacher" in result.report.selection.reason
    assert (repo.parent / "report" / "optimization.json").is_file()


def test_without_torch_distillation_says_how_to_get_it(
    digits_split: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    repo, train, _ = digits_split
    with pytest.raises(Unsupported, match=r"distillation needs torch.*forwardpass\[torch\]"):
        distill(DistillOptions("digits", repo, "mlp:32", train))
