"""``forwardpass distill`` from the command line on the embedded digits model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from forwardpass.cli.main import _register, cli

_register()
DIGITS = Path(__file__).resolve().parents[3] / "src" / "forwardpass" / "models" / "digits"


def test_help_documents_the_student_spec() -> None:
    result = CliRunner().invoke(cli, ["distill", "--help"])
    assert result.exit_code == 0
    assert "mlp:128,64" in result.output and "cnn:8,16/64" in result.output


def test_distill_writes_a_new_version(tmp_path: Path) -> None:
    pytest.importorskip("torch").set_num_threads(1)
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.save(tmp_path / "unlabelled.npy", (digits.images[:1200, None] / 16.0).astype(np.float32))
    shutil.copytree(DIGITS, tmp_path / "repo" / "digits")
    args = [
        "distill",
        "digits",
        "--model-repository",
        str(tmp_path / "repo"),
        "--student",
        "mlp:32",
        "--data",
        str(tmp_path / "unlabelled.npy"),
        "--epochs",
        "20",
        "--max-accuracy-drop",
        "0.1",
        "--no-isolate",
        "--iterations",
        "5",
        "--seconds",
        "0.1",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wrote version 2 of digits" in result.output
    report = json.loads((tmp_path / "repo" / "digits" / "2" / "optimization.json").read_text())
    assert report["method"] == "distillation" and report["optimized_from"] == 1
    assert "held out" in report["data"]["evaluation"]


def test_bad_spec_is_a_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 8, 8), np.float32))
    shutil.copytree(DIGITS, tmp_path / "repo" / "digits")
    args = [
        "distill",
        "digits",
        "--model-repository",
        str(tmp_path / "repo"),
        "--student",
        "transformer:4",
        "--data",
        str(tmp_path / "x.npy"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "the family is mlp or cnn" in result.output
