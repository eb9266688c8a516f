"""The function backend: a registered Python function served as a model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from model_builders import run_with_engine, write_model

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.protocol.documents import index_document, metadata_document
from forwardpass.runtime import function as function_module
from forwardpass.types import InferRequest, Tensor


def repeat_rows(
    inputs: Mapping[str, np.ndarray], params: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Fan-out: each input row repeated ``times`` times (the row count changes)."""
    times = int(params.get("times", "2"))
    return {"y": np.repeat(inputs["x"], times, axis=0)}


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    function_module.FUNCTIONS["repeat_rows"] = f"{__name__}:repeat_rows"
    yield
    del function_module.FUNCTIONS["repeat_rows"]


CONFIG = """
backend: "function"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]
parameters { key: "function" value: { string_value: "%s" } }
parameters { key: "times" value: { string_value: "3" } }
"""


def test_function_model_serves_and_may_change_the_row_count(tmp_path: Path) -> None:
    write_model(tmp_path, "fan", config=CONFIG % "repeat_rows")

    async def body(engine: Engine) -> None:
        x = np.array([[1, 2], [3, 4]], np.float32)
        response = await engine.infer(InferRequest("fan", [Tensor("x", DataType.FP32, x)]))
        assert response.outputs[0].data.tolist() == [[1, 2]] * 3 + [[3, 4]] * 3
        assert metadata_document(engine.metadata("fan"))["platform"] == "function"

    run_with_engine(tmp_path, body)


def test_unknown_function_is_unavailable_with_the_registered_names(tmp_path: Path) -> None:
    write_model(tmp_path, "fan", config=CONFIG % "nope")

    async def body(engine: Engine) -> None:
        (entry,) = index_document(engine.index())
        assert entry["state"] == "UNAVAILABLE"
        assert "unknown function 'nope'" in entry["reason"] and "repeat_rows" in entry["reason"]

    run_with_engine(tmp_path, body)
