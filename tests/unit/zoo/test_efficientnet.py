"""``efficientnet-lite0`` from the zoo: real photographs in, the right ImageNet labels out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from model_builders import run_with_engine
from zoo_helpers import Built, photo

from forwardpass.cli.commands import register
from forwardpass.cli.main import cli
from forwardpass.datatypes import DataType
from forwardpass.protocol.documents import metadata_document
from forwardpass.types import InferRequest, Tensor

register(cli)

NAME = "efficientnet-lite0"
CATS = {"tiger cat", "Egyptian cat", "tabby"}


@pytest.fixture(scope="module")
def built(zoo_build: Callable[[str], Built]) -> Built:
    return zoo_build(NAME)


@pytest.fixture(scope="module")
def repo(built: Built) -> Path:
    return built[0]


def images(*blobs: bytes) -> Tensor:
    array = np.empty((len(blobs), 1), dtype=object)
    array[:, 0] = blobs
    return Tensor("image", DataType.BYTES, array)


def ranked(entry: bytes) -> tuple[float, int, str]:
    score, index, label = entry.decode().split(":", 2)
    return float(score), int(index), label


def test_the_entry_is_complete(built: Built) -> None:
    repo, added = built
    folder = repo / NAME
    assert sorted(p.name for p in folder.iterdir()) == [
        "1",
        "ZOO.json",
        "config.pbtxt",
        "labels.txt",
    ]
    assert len((folder / "labels.txt").read_text().splitlines()) == 1000
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert 15e6 < added.model_bytes < 25e6
    assert "logits" in added.notes[0]


def test_metadata_shows_image_bytes_in_and_answers_out(repo: Path) -> None:
    async def body(engine: Any) -> None:
        meta = metadata_document(engine.metadata(NAME))
        assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
        assert meta["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]},
            {"name": "top5", "datatype": "BYTES", "shape": [-1, 5]},
        ]

    run_with_engine(repo, body)


def test_a_cat_and_an_espresso(repo: Path) -> None:
    async def body(engine: Any) -> dict[str, np.ndarray]:
        request = InferRequest(model_name=NAME, inputs=[images(photo("chelsea"), photo("coffee"))])
        response = await engine.infer(request)
        return {t.name: t.data for t in response.outputs}

    answers = run_with_engine(repo, body)
    probabilities, top5 = answers["probabilities"], answers["top5"]
    assert probabilities.shape == (2, 1000) and top5.shape == (2, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    cat = [ranked(e) for e in top5[0]]
    coffee = [ranked(e) for e in top5[1]]
    assert cat[0][2] in CATS, cat
    assert sum(score for score, _, label in cat if label in CATS) > 0.8, cat
    assert coffee[0][2] == "espresso" and coffee[0][0] > 0.8, coffee
    for row, best in zip(probabilities, (cat, coffee), strict=True):
        assert int(row.argmax()) == best[0][1]
        assert row[best[0][1]] == pytest.approx(best[0][0], abs=1e-6)


def test_concurrent_requests_get_the_same_answer(repo: Path) -> None:
    blobs = [photo("chelsea"), photo("coffee")] * 4

    async def body(engine: Any) -> list[str]:
        responses = await asyncio.gather(
            *(engine.infer(InferRequest(model_name=NAME, inputs=[images(b)])) for b in blobs)
        )
        tops = []
        for response in responses:
            top5 = next(t.data for t in response.outputs if t.name == "top5")
            tops.append(ranked(top5[0, 0])[2])
        return tops

    tops = run_with_engine(repo, body)
    assert all(t in CATS for t in tops[::2]) and set(tops[1::2]) == {"espresso"}
    assert len(set(tops[::2])) == 1


def test_forwardpass_predict_on_a_jpeg_file(repo: Path, tmp_path: Path) -> None:
    cat = tmp_path / "cat.jpg"
    cat.write_bytes(photo("chelsea"))
    result = CliRunner().invoke(
        cli, ["predict", NAME, str(cat), "--model-repository", str(repo), "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)[str(cat)]
    assert answer["top5"][0]["label"] in CATS
    scores = [item["score"] for item in answer["top5"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["probabilities"]["shape"] == [1, 1000]
