"""Ragged batching: requests of different shapes share a batch, told apart by batch inputs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from model_builders import RAGGED_CONFIG, ragged_sum_model, run_with_engine, write_model

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InternalError
from forwardpass.model_config import BatchInput, BatchOutput
from forwardpass.scheduling.batcher import BatchRecord
from forwardpass.scheduling.layout import BatchLayout
from forwardpass.types import InferRequest, Tensor


def layout(*inputs: BatchInput, ragged: tuple[str, ...] = ("x",)) -> BatchLayout:
    return BatchLayout(ragged=frozenset(ragged), batch_input=inputs)


def batch_input(kind: str, data_type: DataType = DataType.INT32) -> BatchInput:
    return BatchInput(kind, ("b",), data_type, ("x",))


def test_a_ragged_input_is_concatenated_flat() -> None:
    parts = [
        {"x": np.arange(3, dtype=np.float32).reshape(1, 3)},
        {"x": np.arange(8, dtype=np.float32).reshape(2, 4)},
    ]
    merged = layout().merge(parts)
    np.testing.assert_array_equal(merged["x"], [0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7])
    # One request alone is flattened too: the model always sees a 1-D input.
    assert layout().merge(parts[:1])["x"].shape == (3,)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("BATCH_ELEMENT_COUNT", [3, 8, 2]),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT", [3, 11, 13]),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", [0, 3, 11, 13]),
        ("BATCH_ITEM_SHAPE", [[3], [4], [4], [2]]),
        ("BATCH_ITEM_SHAPE_FLATTEN", [3, 4, 4, 2]),
    ],
)
def test_batch_inputs_describe_the_source_input(kind: str, expected: list[object]) -> None:
    # Requests of batch 1 ([1, 3]), batch 2 ([2, 4]) and batch 1 ([1, 2]).
    parts = [
        {"x": np.zeros((1, 3), np.float32)},
        {"x": np.zeros((2, 4), np.float32)},
        {"x": np.zeros((1, 2), np.float32)},
    ]
    merged = layout(batch_input(kind)).merge(parts)
    assert merged["b"].dtype == np.int32
    assert merged["b"].tolist() == expected


def test_max_element_count_is_a_shape() -> None:
    parts = [{"x": np.zeros((1, 3), np.float32)}, {"x": np.zeros((1, 7), np.float32)}]
    merged = layout(batch_input("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", DataType.FP32)).merge(parts)
    assert merged["b"].shape == (7,) and merged["b"].dtype == np.float32


def test_scatter_output_follows_each_requests_input_shape() -> None:
    lay = BatchLayout(
        ragged=frozenset({"x"}),
        batch_output=(BatchOutput(("y",), "BATCH_SCATTER_WITH_INPUT_SHAPE", ("x",)),),
    )
    parts = [{"x": np.zeros((1, 2), np.float32)}, {"x": np.zeros((1, 3), np.float32)}]
    out = lay.split({"y": np.arange(5.0), "s": np.array([[9.0], [8.0]])}, parts, [1, 1], "m")
    assert out[0]["y"].tolist() == [[0.0, 1.0]] and out[1]["y"].tolist() == [[2.0, 3.0, 4.0]]
    assert out[0]["s"].tolist() == [[9.0]] and out[1]["s"].tolist() == [[8.0]]
    with pytest.raises(InternalError, match="scatters it by the 5 elements of input 'x'"):
        lay.split({"y": np.arange(4.0)}, parts, [1, 1], "m")


def test_requests_of_different_lengths_share_a_batch(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "ragged", config=RAGGED_CONFIG, model=ragged_sum_model())
    lengths = [3, 1, 6, 2, 4]

    async def body(engine: Engine) -> None:
        _, loaded = engine.version("ragged")
        assert loaded.batcher is not None
        records: list[BatchRecord] = []
        loaded.batcher.listener = records.append
        values = [
            np.arange(n, dtype=np.float32).reshape(1, n) + 10 * i for i, n in enumerate(lengths)
        ]
        responses = await asyncio.gather(
            *(engine.infer(InferRequest("ragged", [Tensor("x", DataType.FP32, v)])) for v in values)
        )
        for value, response in zip(values, responses, strict=True):
            outputs = {t.name: t.data for t in response.outputs}
            assert outputs["sum"].tolist() == [[float(value.sum())]]
            assert outputs["twice"].shape == value.shape
            np.testing.assert_array_equal(outputs["twice"], 2 * value)
        # One batch of five requests with five different lengths.
        assert [(r.requests, r.ok) for r in records] == [(5, True)]

    run_with_engine(root, body)


def test_a_configured_warmup_gets_the_batch_inputs(tmp_path: Path) -> None:
    root = tmp_path / "models"
    warmup = """
model_warmup [ {
  name: "w" batch_size: 1
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] random_data: true } }
} ]
"""
    write_model(root, "ragged", config=RAGGED_CONFIG + warmup, model=ragged_sum_model())

    async def body(engine: Engine) -> bool:
        return engine.is_ready("ragged")

    # Without the ``end`` batch input the sample would fail in onnxruntime, and so the load.
    assert run_with_engine(root, body)
