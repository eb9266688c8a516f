"""``breast-cancer`` from the zoo: trained at build time, named columns in over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from zoo_helpers import Built, with_http_app

from forwardpass.zoo.breast_cancer import CLASSES, dataset

NAME = "breast-cancer"
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def repo(zoo_build: Callable[[str], Built]) -> Path:
    return zoo_build(NAME)[0]


def request(rows: np.ndarray, names: list[str], leave_out: str = "") -> dict[str, Any]:
    return {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [len(rows), 1], "data": rows[:, j].tolist()}
            for j, n in enumerate(names)
            if n != leave_out
        ]
    }


def test_training_record_and_entry(repo: Path) -> None:
    folder = repo / NAME
    training = json.loads((folder / "TRAINING.json").read_text())
    assert training["heldout_accuracy"] >= 0.95
    assert training["heldout_accuracy_onnx"] == training["heldout_accuracy"]
    assert training["split"]["test_size"] == 143
    assert (folder / "labels.txt").read_text().splitlines() == list(CLASSES)
    assert not (folder / "scaler.json").exists()  # scaling lives in the graph


def test_named_columns_in_probabilities_and_diagnosis_out(repo: Path) -> None:
    x, y, names = dataset()
    # Two clear cases of each class, and the columns sent in a shuffled order.
    picks = [int(np.flatnonzero(y == 0)[0]), int(np.flatnonzero(y == 1)[0]), 1, 19]
    rows = x[picks]
    document = request(rows, names)
    document["inputs"].reverse()

    async def body(call: Any) -> None:
        meta = orjson.loads((await call("GET", f"/v2/models/{NAME}")).body)
        assert [i["name"] for i in meta["inputs"]] == names
        assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities", "diagnosis"}
        response = await call("POST", INFER, document)
        assert response.status == 200, response.body
        outputs = {o["name"]: o for o in orjson.loads(response.body)["outputs"]}
        probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(len(picks), 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
        expected = [CLASSES[int(y[i])] for i in picks]
        assert outputs["diagnosis"]["data"] == expected
        assert [CLASSES[int(i)] for i in probabilities.argmax(axis=1)] == expected
        assert outputs["label"]["data"] == [int(y[i]) for i in picks]

    with_http_app(repo, body)


def test_a_missing_column_is_a_400_naming_it(repo: Path) -> None:
    x, _, names = dataset()

    async def body(call: Any) -> None:
        response = await call("POST", INFER, request(x[:1], names, leave_out="worst_area"))
        assert response.status == 400
        message = orjson.loads(response.body)["error"]
        # Triton's message lists what the request gave and then what it lacks.
        assert message.startswith("expected 30 inputs but got 29 inputs"), message
        assert message.endswith(
            "but missing required input(s) ['worst_area']. Please provide all required input(s)."
        ), message

    with_http_app(repo, body)
