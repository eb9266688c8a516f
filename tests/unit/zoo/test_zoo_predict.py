"""``forwardpass predict`` on zoo models whose inputs are raw: text lines, named columns, OCR."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
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


def test_predict_finds_the_face_in_a_photograph(
    zoo_build: Callable[[str], Built], tmp_path: Path
) -> None:
    from zoo_helpers import jpeg, photo

    repository, _ = zoo_build("mtcnn")
    picture = tmp_path / "astronaut.jpg"
    picture.write_bytes(photo("astronaut"))
    answer = predict("mtcnn", picture, repository)
    boxes = answer["boxes"]
    assert boxes["shape"] == [1, 4]  # type: ignore[index]
    ((x1, y1, x2, y2),) = boxes["data"]  # type: ignore[index]
    assert 170 < x1 < 190 and 50 < y1 < 75 and 255 < x2 < 280 and 160 < y2 < 185
    assert answer["landmarks"]["shape"] == [1, 5, 2]  # type: ignore[index]
    empty = tmp_path / "grey.jpg"
    empty.write_bytes(jpeg(np.full((120, 160, 3), 128, np.uint8)))
    assert predict("mtcnn", empty, repository)["boxes"]["shape"] == [0, 4]  # type: ignore[index]
