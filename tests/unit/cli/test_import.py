"""``forwardpass import``: arguments, the report, exit codes, and what lands on disk."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from model_builders import add_model

from forwardpass.cli.main import cli
from forwardpass.repository import ModelRepository


@pytest.fixture
def runner() -> CliRunner:
    from forwardpass.cli import commands

    commands.register(cli)
    return CliRunner()


def test_onnx_import_reports_differences(tmp_path: Path, runner: CliRunner) -> None:
    source = tmp_path / "add.onnx"
    onnx.save(add_model(), str(source))
    repo = tmp_path / "repo"
    args = ["import", "onnx", str(source), "--name", "add", "--model-repository", str(repo)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    for text in ("imported add version 1", "max |diff|", "ok", "config.pbtxt", "model.onnx"):
        assert text in result.output
    assert ModelRepository(repo).read("add").versions == (1,)

    again = runner.invoke(cli, [*args, "--version", "1"])
    assert again.exit_code == 1
    assert "never overwritten" in again.output


def test_sklearn_import_with_sample_csv(tmp_path: Path, runner: CliRunner) -> None:
    pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    (tmp_path / "iris.pkl").write_bytes(pickle.dumps(LogisticRegression(max_iter=1000).fit(x, y)))
    header = "sepal length,sepal width,petal length,petal width"
    np.savetxt(tmp_path / "rows.csv", x, delimiter=",", header=header, comments="")
    repo = tmp_path / "repo"
    result = runner.invoke(
        cli,
        [
            "import",
            "sklearn",
            str(tmp_path / "iris.pkl"),
            "--name",
            "iris",
            "--model-repository",
            str(repo),
            "--sample",
            str(tmp_path / "rows.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "150 sample row(s)" in result.output and "probabilities" in result.output
    assert "only files you trust" in result.output  # the unpickling warning
    assert (repo / "iris" / "labels.txt").read_text().split() == ["0", "1", "2"]

    strict = runner.invoke(
        cli,
        [
            "import",
            "sklearn",
            str(tmp_path / "iris.pkl"),
            "--name",
            "iris2",
            "--model-repository",
            str(repo),
            "--atol",
            "0",
            "--rtol",
            "0",
        ],
    )
    assert strict.exit_code == 1
    assert "does not match the original" in strict.output
    assert not (repo / "iris2").exists()


def test_framework_options_are_checked(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["import", "onnx", "m.onnx", "--name", "m", "--task", "embedding"])
    assert result.exit_code == 2
    assert "--task applies to huggingface imports only" in result.output


def test_default_repository_is_never_the_embedded_one(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "add.onnx"
    onnx.save(add_model(), str(source))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORWARDPASS_MODEL_REPOSITORY", raising=False)
    result = runner.invoke(cli, ["import", "onnx", str(source), "--name", "add"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model_repository" / "add" / "1" / "model.onnx").is_file()

    monkeypatch.setenv("FORWARDPASS_MODEL_REPOSITORY", str(tmp_path / "env_repo"))
    result = runner.invoke(cli, ["import", "onnx", str(source), "--name", "add"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env_repo" / "add" / "1" / "model.onnx").is_file()


def test_torch_and_huggingface_commands(tmp_path: Path, runner: CliRunner) -> None:
    torch = pytest.importorskip("torch")
    (tmp_path / "net.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Linear(4, 2)\n"
    )
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "w.pt")
    result = runner.invoke(
        cli,
        [
            "import",
            "torch",
            f"{tmp_path / 'net.py'}:make",
            "--state-dict",
            str(tmp_path / "w.pt"),
            "--input-shape",
            "x:1,4",
            "--name",
            "lin",
            "--model-repository",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "output" in result.output and "imported lin version 1 (torch)" in result.output

    missing = runner.invoke(
        cli,
        [
            "import",
            "huggingface",
            str(tmp_path),
            "--name",
            "h",
            "--model-repository",
            str(tmp_path / "r"),
        ],
    )
    assert missing.exit_code == 2 and "--task" in missing.output
