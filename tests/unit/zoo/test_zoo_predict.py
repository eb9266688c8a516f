"""``forwardpass predict`` on zoo models whose inputs are raw: text lines, named columns, OCR."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from test_ppocr import text_png
from zoo_helpers import Built

from forwardpass.cli.commands import register
from forwardpass.cli.main import cli
from forwardpass.zoo.breast_cancer import dataset

register(cli)


def predict(model: str, path: Path, repository: Path) -> dict[str, object]:
    result = CliRunner().invoke(
        cli, ["predict", model, str(path), "--model-repository", str(repository), "--json"]
    )
    assert result.exit_code == 0, result.output
    answer: dict[str, object] = json.loads(result.output)[str(path)]
    return answer


def test_predict_a_patient_from_named_columns(
    zoo_build: Callable[[str], Built], tmp_path: Path
) -> None:
    repository, _ = zoo_build("breast-cancer")
    features, targets, columns = dataset()
    for row in (0, 19):  # a malignant and a benign case
        patient = tmp_path / f"patient{row}.json"
        patient.write_text(json.dumps(dict(zip(columns, map(float, features[row]), strict=True))))
        answer = predict("breast-cancer", patient, repository)
        want = ["malignant", "benign"][int(targets[row])]
        assert answer["diagnosis"] == {"shape": [1, 1], "data": [want]}


def test_predict_reads_text_in_a_picture(zoo_build: Callable[[str], Built], tmp_path: Path) -> None:
    repository, _ = zoo_build("ppocr")
    picture = tmp_path / "sign.png"
    picture.write_bytes(text_png())
    answer = predict("ppocr", picture, repository)
    assert answer["texts"]["data"] == ["forwardpass 2026", "HELLO WORLD"]  # type: ignore[index]


def test_predict_embeds_each_line_of_a_text_file(
    zoo_build: Callable[[str], Built], tmp_path: Path
) -> None:
    repository, _ = zoo_build("all-minilm-l6-v2")
    lines = tmp_path / "sentences.txt"
    lines.write_text("A cat sleeps on the sofa.\n\nShares fell on Monday.\n")
    embedding = predict("all-minilm-l6-v2", lines, repository)["sentence_embedding"]
    assert embedding["shape"] == [2, 384]  # type: ignore[index]
