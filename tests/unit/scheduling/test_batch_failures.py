"""One request's bad data never fails the requests batched with it (engine + real ONNX models)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_builders import (
    GATHER_TABLE,
    gather_model,
    null_config,
    run_with_engine,
    text_model,
    write_model,
)

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InternalError, InvalidArgument, http_status
from forwardpass.scheduling.batcher import BatchRecord
from forwardpass.types import InferRequest, Tensor

GATHER_CONFIG = """
name: "gather"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { preferred_batch_size: [ 12 ] max_queue_delay_microseconds: 5000000 }
"""

TEXT_CONFIG = """
name: "text"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_STRING dims: [ 1 ] } ]
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 5000000 }
"""


def record_batches(engine: Engine, model: str) -> list[BatchRecord]:
    """Every backend execution of ``model`` from now on (beside its statistics)."""
    _, loaded = engine.version(model)
    assert loaded.batcher is not None
    records: list[BatchRecord] = []
    listener = loaded.batcher.listener

    def both(record: BatchRecord) -> None:
        records.append(record)
        if listener is not None:
            listener(record)

    loaded.batcher.listener = both
    return records


def test_an_out_of_range_index_fails_only_its_request(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "gather", config=GATHER_CONFIG, model=gather_model())
    indices = [i % 10 for i in range(12)]
    indices[5] = 42  # out of the table's range: ORT fails the Gather node for the whole batch

    async def body(engine: Engine) -> None:
        records = record_batches(engine, "gather")
        requests = [
            InferRequest("gather", [Tensor("x", DataType.INT64, np.array([[i]], np.int64))])
            for i in indices
        ]
        results = await asyncio.gather(*(engine.infer(r) for r in requests), return_exceptions=True)
        for index, result in zip(indices, results, strict=True):
            if index == 42:
                assert isinstance(result, InvalidArgument), result
                assert http_status(result) == 400
                assert "out of data bounds" in result.message and "idx=42" in result.message
            else:
                assert not isinstance(result, BaseException), result
                assert result.outputs[0].data.tolist() == [[GATHER_TABLE[index]]]
        # All twelve went out as one merged batch, which failed and was then bisected.
        assert (records[0].requests, records[0].ok, records[0].retry) == (12, False, False)
        assert sum(r.requests for r in records if r.ok) == 11
        assert len(records) <= 2 * 12 - 1
        [stats] = engine.stats("gather")
        assert stats.inference_stats.success.count == 11
        assert stats.inference_stats.fail.count == 1
        assert stats.inference_stats.queue.count == 12  # re-runs not counted twice

    run_with_engine(root, body)


def test_non_utf8_text_fails_only_its_request(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "text", config=TEXT_CONFIG, model=text_model())
    words = [f"word {i}".encode() for i in range(8)]
    words[3] = b"\xff\xfe not utf-8"

    async def body(engine: Engine) -> None:
        records = record_batches(engine, "text")
        requests = [
            InferRequest("text", [Tensor("x", DataType.BYTES, np.array([[w]], dtype=object))])
            for w in words
        ]
        results = await asyncio.gather(*(engine.infer(r) for r in requests), return_exceptions=True)
        for i, result in enumerate(results):
            if i == 3:
                assert isinstance(result, InvalidArgument), result
                assert "UTF-8" in result.message and "'x'" in result.message
            else:
                assert not isinstance(result, BaseException), result
                assert result.outputs[0].data.reshape(-1)[0] in (words[i], words[i].decode())
        # The bad request was turned away before queueing; the seven ran as one batch.
        assert [(r.requests, r.ok) for r in records] == [(7, True)]

    run_with_engine(
        root,
        body,
    )


def test_a_backend_failure_is_a_500_for_its_whole_batch(tmp_path: Path) -> None:
    # The null backend's fail_value raises InternalError: not the client's fault, so no
    # bisection, and every request of the batch gets the 500 (never a 400).
    root = tmp_path / "models"
    extra = """
parameters { key: "fail_value" value: { string_value: "13" } }
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 5000000 }
"""
    write_model(root, "m", config=null_config("m", max_batch_size=8, extra=extra))

    async def body(engine: Engine) -> None:
        records = record_batches(engine, "m")
        requests = [
            InferRequest("m", [Tensor("a", DataType.INT32, np.array([[13 if i == 2 else i, 0]]))])
            for i in range(8)
        ]
        results = await asyncio.gather(*(engine.infer(r) for r in requests), return_exceptions=True)
        assert all(isinstance(r, InternalError) and http_status(r) == 500 for r in results)
        assert [(r.requests, r.ok, r.retry) for r in records] == [(8, False, False)]

    run_with_engine(root, body)


@pytest.mark.parametrize("rows", [1, 3])
def test_check_passes_clean_text_through(tmp_path: Path, rows: int) -> None:
    root = tmp_path / "models"
    write_model(root, "text", config=TEXT_CONFIG.replace("[ 8 ]", "[ 1 ]"), model=text_model())

    async def body(engine: Engine) -> Any:
        data = np.array([["héllo".encode()] for _ in range(rows)], dtype=object)
        response = await engine.infer(InferRequest("text", [Tensor("x", DataType.BYTES, data)]))
        return response.outputs[0].data

    out = run_with_engine(root, body)
    assert out.shape == (rows, 1)
    assert [x if isinstance(x, str) else x.decode() for x in out.reshape(-1)] == ["héllo"] * rows
