"""The engine in-process (no HTTP): loading, validation, inference, versions, reload, stats."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_builders import ADD_BIAS, null_config, write_model

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine, ModelState
from forwardpass.errors import (
    ForwardpassError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from forwardpass.protocol.documents import index_document, metadata_document, statistics_document
from forwardpass.types import InferRequest, RequestedOutput, Tensor


def fp32(*rows: list[float], name: str = "x") -> Tensor:
    return Tensor(name, DataType.FP32, np.array(rows, dtype=np.float32))


def int32(*rows: list[int], name: str = "a") -> Tensor:
    return Tensor(name, DataType.INT32, np.array(rows, dtype=np.int32))


def add_request(*rows: list[float], **kw: Any) -> InferRequest:
    return InferRequest(model_name="add", inputs=[fp32(*rows)], **kw)


def expect(engine: Engine, request: InferRequest, error: type[ForwardpassError], *words: str):
    """Run ``request`` and check it fails with ``error`` whose message holds every word."""

    async def check() -> str:
        with pytest.raises(error) as info:
            await engine.infer(request)
        for word in words:
            assert word in info.value.message, info.value.message
        return info.value.message

    return check()


# ---------------------------------------------------------------------------------- inference


def test_onnx_model_computes_the_right_values(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        x = np.array([[0, 0, 0], [1.5, -2, 10]], dtype=np.float32)
        response = await engine.infer(
            InferRequest(model_name="add", inputs=[Tensor("x", DataType.FP32, x)], id="r1")
        )
        assert response.model_name == "add"
        assert response.model_version == "1"
        assert response.id == "r1"
        [y] = response.outputs
        assert (y.name, y.datatype, y.shape) == ("y", DataType.FP32, (2, 3))
        np.testing.assert_array_equal(y.data, x + ADD_BIAS)

    with_engine(repo, body)


def test_concurrent_requests_each_get_their_own_rows(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        requests = [add_request([i, i, i]) for i in range(20)]
        responses = await asyncio.gather(*(engine.infer(r) for r in requests))
        for i, response in enumerate(responses):
            np.testing.assert_array_equal(response.outputs[0].data, [[i + 1, i + 2, i + 3]])

    with_engine(repo, body)


def test_input_of_another_numeric_width_is_cast_only_when_datatype_matches(
    repo: Path, with_engine: Any
) -> None:
    async def body(engine: Engine) -> None:
        # Declared FP32 but held as float64: the engine casts to the model's dtype.
        x = Tensor("x", DataType.FP32, np.array([[1, 2, 3]], dtype=np.float64))
        response = await engine.infer(InferRequest(model_name="add", inputs=[x]))
        assert response.outputs[0].data.dtype == np.float32
        np.testing.assert_array_equal(response.outputs[0].data, [[2, 4, 6]])

    with_engine(repo, body)


def test_reshape_is_applied_on_the_way_in_and_undone_on_the_way_out(
    repo: Path, with_engine: Any
) -> None:
    async def body(engine: Engine) -> None:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        response = await engine.infer(
            InferRequest(model_name="square", inputs=[Tensor("x", DataType.FP32, x)])
        )
        [y] = response.outputs
        assert y.shape == (2, 4)
        np.testing.assert_array_equal(y.data, x * x)
        assert metadata_document(engine.metadata("square"))["inputs"] == [
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
        ]

    with_engine(repo, body)


def test_requested_output_only_and_classification_with_labels(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        # y = x + [1, 2, 3]: row 0 → [11, 2, 3] (ant first), row 1 → [1, 2, 13] (cat first).
        request = add_request(
            [10, 0, 0], [0, 0, 10], outputs=[RequestedOutput("y", {"classification": 2})]
        )
        response = await engine.infer(request)
        [y] = response.outputs
        assert y.datatype is DataType.BYTES
        assert y.shape == (2, 2)
        assert y.data.tolist() == [
            [b"11.000000:0:ant", b"3.000000:2:cat"],
            [b"13.000000:2:cat", b"2.000000:1:bee"],
        ]
        assert y.parameters == {}  # Triton never echoes the request's output parameters

    with_engine(repo, body)


def test_classification_count_larger_than_classes_is_clamped(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        request = add_request([0, 0, 0], outputs=[RequestedOutput("y", {"classification": 10})])
        [y] = (await engine.infer(request)).outputs
        assert y.shape == (1, 3)
        assert [v.split(b":")[2] for v in y.data[0]] == [b"cat", b"bee", b"ant"]

    with_engine(repo, body)


# --------------------------------------------------------------------------------- validation


def test_validation_errors_name_the_problem(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        nine = [[0.0, 0.0, 0.0]] * 9
        # Each message begins with Triton's text (core InferenceRequest::Normalize).
        cases: list[tuple[InferRequest, tuple[str, ...]]] = [
            (
                InferRequest(
                    "add", [fp32([1, 2, 3]), Tensor("z", DataType.FP32, np.zeros((1, 3)))]
                ),
                (
                    "expected 1 inputs but got 2 inputs for model 'add'. Got input(s) ['x','z']",
                    "unexpected input(s) ['z']",
                ),
            ),
            (
                InferRequest("add", [Tensor("z", DataType.FP32, np.zeros((1, 3)))]),
                ("unexpected inference input 'z' for model 'add'", "['x']"),
            ),
            (
                InferRequest("add", []),
                (
                    "expected 1 inputs but got 0 inputs for model 'add'. Got input(s) [], but "
                    "missing required input(s) ['x']. Please provide all required input(s).",
                ),
            ),
            (
                InferRequest("add", [Tensor("x", DataType.INT32, np.zeros((1, 3), np.int32))]),
                ("inference input 'x' data-type is 'INT32', but model 'add' expects 'FP32'",),
            ),
            (
                InferRequest("add", [fp32([1, 2])]),
                (
                    "unexpected shape for input 'x' for model 'add'. Expected [-1,3], got [1,2]. "
                    "NOTE: Setting a non-zero max_batch_size",
                ),
            ),
            (
                InferRequest("add", [Tensor("x", DataType.FP32, np.zeros(3, np.float32))]),
                ("unexpected shape for input 'x'", "got [3]"),
            ),
            (
                InferRequest("add", [Tensor("x", DataType.FP32, np.float32(1.0)[()])]),
                ("input 'x' has no shape but model requires batch dimension for 'add'",),
            ),
            (
                InferRequest("add", [fp32(*nine)]),
                ("inference request batch-size must be <= 8 for 'add'", "batch size 9"),
            ),
            (
                InferRequest("add", [fp32([1, 2, 3]), fp32([1, 2, 3])]),
                ("expected 1 inputs but got 2 inputs",),
            ),
            (
                add_request([1, 2, 3], outputs=[RequestedOutput("nope")]),
                ("unexpected inference output 'nope' for model 'add'", "['y']"),
            ),
        ]
        for request, words in cases:
            await expect(engine, request, InvalidArgument, *words)

    with_engine(repo, body)


def test_empty_batch_is_rejected(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        empty = Tensor("x", DataType.FP32, np.zeros((0, 3), np.float32))
        await expect(engine, InferRequest("add", [empty]), InvalidArgument, "batch size 0")

    with_engine(repo, body)


@pytest.mark.parametrize("count", [0, -1, "3", 1.5, True, None])
def test_bad_classification_parameter(repo: Path, with_engine: Any, count: object) -> None:
    async def body(engine: Engine) -> None:
        request = add_request([1, 2, 3], outputs=[RequestedOutput("y", {"classification": count})])
        await expect(engine, request, InvalidArgument, "classification", "positive integer")

    with_engine(repo, body)


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"priority": -1}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 1.0}, "priority"),
        ({"timeout": -5}, "timeout"),
        ({"timeout": 1.5}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": False}, "timeout"),
    ],
)
def test_bad_schedule_parameters(
    repo: Path, with_engine: Any, params: dict[str, object], word: str
) -> None:
    async def body(engine: Engine) -> None:
        await expect(engine, add_request([1, 2, 3], parameters=params), InvalidArgument, word)
        # The rejected request still counts as a failure of that model version.
        [stats] = statistics_document(engine.stats("add"))["model_stats"]
        assert stats["inference_stats"]["fail"]["count"] == 1
        assert stats["execution_count"] == 0

    with_engine(repo, body)


def test_valid_schedule_parameters_are_accepted(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        request = add_request([1, 2, 3], parameters={"priority": 0, "timeout": 10_000_000})
        response = await engine.infer(request)
        np.testing.assert_array_equal(response.outputs[0].data, [[2, 4, 6]])

    with_engine(repo, body)


def test_priority_must_be_one_of_the_models_levels(tmp_path: Path, with_engine: Any) -> None:
    root = tmp_path / "models"
    levels = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    write_model(root, "p", config=null_config("p", extra=levels))

    async def body(engine: Engine) -> None:
        for priority in (0, 1, 2):
            request = InferRequest("p", [int32([priority, 0])], parameters={"priority": priority})
            assert (await engine.infer(request)).outputs[0].data.tolist() == [[priority, 0]]
        request = InferRequest("p", [int32([3, 0])], parameters={"priority": 3})
        await expect(engine, request, InvalidArgument, "priority 3 is out of range", "1..2")

    with_engine(root, body)


def test_unknown_model_is_not_found(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        await expect(engine, InferRequest("ghost", [fp32([1, 2, 3])]), NotFound, "'ghost'")
        with pytest.raises(NotFound):
            metadata_document(engine.metadata("ghost"))
        assert not engine.is_ready("ghost")

    with_engine(repo, body)


# ----------------------------------------------------------------------------------- versions


def test_version_selection(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        def echo(version: str = "") -> InferRequest:
            return InferRequest("echo", [int32([7, 8])], model_version=version)

        assert (await engine.infer(echo())).model_version == "3"
        assert (await engine.infer(echo("2"))).model_version == "2"
        response = await engine.infer(echo("1"))
        assert response.model_version == "1"
        assert response.outputs[0].data.tolist() == [[7, 8]]
        await expect(
            engine,
            echo("7"),
            NotFound,
            "Request for unknown model: 'echo' version 7 is not found",
            "[1, 2, 3]",
        )
        await expect(engine, echo("two"), InvalidArgument, "integer", "'two'")
        assert metadata_document(engine.metadata("echo"))["versions"] == ["1", "2", "3"]
        assert engine.is_ready("echo", "2")
        assert not engine.is_ready("echo", "9")

    with_engine(repo, body)


def test_latest_policy_serves_only_the_highest_version(tmp_path: Path, with_engine: Any) -> None:
    root = tmp_path / "models"
    write_model(root, "m", config=null_config("m"), versions=(1, 5, 10))

    async def body(engine: Engine) -> None:
        assert metadata_document(engine.metadata("m"))["versions"] == ["10"]
        await expect(engine, InferRequest("m", [int32([1, 2])], model_version="5"), NotFound)

    with_engine(root, body)


# ------------------------------------------------------------------------- state and lifecycle


def test_broken_model_is_unavailable_with_reason_while_others_are_ready(
    repo: Path, with_engine: Any
) -> None:
    async def body(engine: Engine) -> None:
        assert not engine.ready  # strict readiness: a model it was asked to load is not ready
        index = {(row["name"], row.get("version")): row for row in index_document(engine.index())}
        broken = index[("broken", "")]
        assert broken["state"] == "UNAVAILABLE"
        assert "config.pbtxt:2" in broken["reason"]
        for name in ("add", "square"):
            assert index[(name, "1")]["state"] == "READY"
        assert [
            (r["name"], r["version"]) for r in index_document(engine.index()) if r["name"] == "echo"
        ] == [
            ("echo", "1"),
            ("echo", "2"),
            ("echo", "3"),
        ]
        ready_names = {row.name for row in engine.index(ready_only=True)}
        assert ready_names == {"add", "square", "echo"}
        await expect(engine, InferRequest("broken", []), Unavailable, "UNAVAILABLE", "config.pbtxt")
        assert engine.handle("broken").state is ModelState.UNAVAILABLE

    with_engine(repo, body)


def test_explicit_mode_loads_only_named_models(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        index = {row["name"]: row for row in index_document(engine.index())}
        assert index["add"]["state"] == "READY"
        assert index["square"] == {"name": "square"}  # in the repository, never loaded
        await expect(engine, InferRequest("square", []), NotFound)
        await engine.load("square")
        assert engine.is_ready("square")

    with_engine(repo, body, load_models=("add",))


def test_unload_then_requests_are_unavailable_and_load_brings_it_back(
    repo: Path, with_engine: Any
) -> None:
    async def body(engine: Engine) -> None:
        await engine.unload("add")
        await expect(engine, add_request([1, 2, 3]), Unavailable, "not ready", "unloaded")
        assert not engine.is_ready("add")
        [row] = [r for r in index_document(engine.index()) if r["name"] == "add"]
        assert (row["state"], row["reason"]) == ("UNAVAILABLE", "unloaded")
        with pytest.raises(NotFound):
            await engine.unload("never-loaded")
        with pytest.raises(InvalidArgument):
            await engine.unload("../add")
        await engine.load("add")
        response = await engine.infer(add_request([1, 2, 3]))
        np.testing.assert_array_equal(response.outputs[0].data, [[2, 4, 6]])

    with_engine(repo, body)


def test_reload_lets_in_flight_requests_finish_on_the_old_version(
    repo: Path, with_engine: Any
) -> None:
    delay = 'parameters { key: "delay_ms" value: { string_value: "100" } }'
    write_model(repo, "slow", config=null_config("slow", extra=delay))

    async def body(engine: Engine) -> None:
        old = [
            asyncio.create_task(engine.infer(InferRequest("slow", [int32([i, i])])))
            for i in range(3)
        ]
        await asyncio.sleep(0.05)  # the first batch is running, the others are queued
        (repo / "slow" / "2").mkdir()
        await engine.load("slow")
        # The reload returned: the new version serves, and every old request finished.
        assert all(task.done() for task in old)
        for i, task in enumerate(old):
            response = task.result()
            assert response.model_version == "1"
            assert response.outputs[0].data.tolist() == [[i, i]]
        response = await engine.infer(InferRequest("slow", [int32([9, 9])]))
        assert response.model_version == "2"
        assert metadata_document(engine.metadata("slow"))["versions"] == ["2"]

    with_engine(repo, body)


def test_unload_lets_in_flight_requests_finish(repo: Path, with_engine: Any) -> None:
    delay = 'parameters { key: "delay_ms" value: { string_value: "50" } }'
    write_model(repo, "slow", config=null_config("slow", extra=delay))

    async def body(engine: Engine) -> None:
        running = [
            asyncio.create_task(engine.infer(InferRequest("slow", [int32([i, 0])])))
            for i in range(3)
        ]
        await asyncio.sleep(0.01)
        await engine.unload("slow")
        assert [t.result().outputs[0].data.tolist() for t in running] == [
            [[0, 0]],
            [[1, 0]],
            [[2, 0]],
        ]
        await expect(engine, InferRequest("slow", [int32([1, 1])]), Unavailable, "unloaded")

    with_engine(repo, body)


def test_loading_a_model_that_does_not_exist_leaves_no_trace(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        with pytest.raises(NotFound, match="not in the repository"):
            await engine.load("ghost")
        with pytest.raises(InvalidArgument, match="path separator"):
            await engine.load("../add")
        assert "ghost" not in {row["name"] for row in index_document(engine.index())}
        await expect(engine, InferRequest("ghost", []), NotFound)
        with pytest.raises(NotFound):
            statistics_document(engine.stats("ghost"))["model_stats"]

    with_engine(repo, body)


def test_failed_reload_keeps_the_old_version_serving(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        (repo / "add" / "config.pbtxt").write_text("max_batch_size: nonsense\n")
        with pytest.raises(ForwardpassError):
            await engine.load("add")
        assert engine.is_ready("add")
        response = await engine.infer(add_request([0, 0, 0]))
        np.testing.assert_array_equal(response.outputs[0].data, [ADD_BIAS])

    with_engine(repo, body)


def test_stop_then_engine_is_not_ready(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        await engine.stop()
        assert not engine.ready
        await expect(engine, add_request([1, 2, 3]), Unavailable)

    with_engine(repo, body)


# ------------------------------------------------------------------------------------- warm-up

WARMUP = """
model_warmup [ {{
  name: "zeros"
  batch_size: 2
  count: {count}
  inputs {{ key: "a" value: {{ data_type: TYPE_INT32 dims: [ 2 ] zero_data: true }} }}
}} ]
"""


def test_warmup_runs_before_the_model_is_ready(
    tmp_path: Path, with_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwardpass.runtime.null import NullBackend

    seen: list[tuple[int, ...]] = []
    original = NullBackend._infer

    def spy(self: NullBackend, inputs: Any, outputs: Any) -> Any:
        seen.append(tuple(next(iter(inputs.values())).shape))
        return original(self, inputs, outputs)

    monkeypatch.setattr(NullBackend, "_infer", spy)
    root = tmp_path / "models"
    write_model(root, "warm", config=null_config("warm", extra=WARMUP.format(count=3)))

    async def body(engine: Engine) -> None:
        assert engine.is_ready("warm")
        assert seen == [(2, 2)] * 3  # three zero batches of 2 rows ran at load
        # Warm-up is not traffic: the statistics start at zero.
        [stats] = statistics_document(engine.stats("warm"))["model_stats"]
        assert stats["inference_count"] == 0

    with_engine(root, body)


def test_failing_warmup_leaves_the_model_unavailable(tmp_path: Path, with_engine: Any) -> None:
    root = tmp_path / "models"
    extra = WARMUP.format(count=1) + 'parameters { key: "fail_value" value: { string_value: "0" } }'
    write_model(root, "cold", config=null_config("cold", extra=extra))
    write_model(root, "fine", config=null_config("fine"))

    async def body(engine: Engine) -> None:
        index = {row["name"]: row for row in index_document(engine.index())}
        assert index["cold"]["state"] == "UNAVAILABLE"
        assert "fail_value" in index["cold"]["reason"]
        assert index["fine"]["state"] == "READY"

    with_engine(root, body)


# ---------------------------------------------------------------------------------- statistics


def test_statistics_shape_and_counts(repo: Path, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        for _ in range(3):
            await engine.infer(add_request([1, 2, 3], [4, 5, 6]))
        with pytest.raises(InvalidArgument):
            await engine.infer(InferRequest("add", []))
        [stats] = statistics_document(engine.stats("add"))["model_stats"]
        assert stats["name"] == "add"
        assert stats["version"] == "1"
        assert stats["inference_count"] == 6  # rows
        assert stats["execution_count"] == 3  # batches (sequential requests never merge)
        assert stats["last_inference"] > 0
        inference = stats["inference_stats"]
        assert set(inference) == {
            "success",
            "fail",
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
            "cache_hit",
            "cache_miss",
        }
        assert inference["success"]["count"] == 3
        assert inference["success"]["ns"] > 0
        assert inference["fail"]["count"] == 1
        assert inference["queue"]["count"] == 3
        assert inference["compute_infer"]["count"] == 3
        assert inference["compute_infer"]["ns"] > 0
        [batch] = stats["batch_stats"]
        assert batch["batch_size"] == 2
        assert batch["compute_infer"]["count"] == 3
        # Every version of every model, and one named version.
        everything = statistics_document(engine.stats())["model_stats"]
        assert [(s["name"], s["version"]) for s in everything] == [
            ("add", "1"),
            ("echo", "1"),
            ("echo", "2"),
            ("echo", "3"),
            ("square", "1"),
        ]
        assert [
            s["version"] for s in statistics_document(engine.stats("echo", "2"))["model_stats"]
        ] == ["2"]
        assert statistics_document(engine.stats("broken"))["model_stats"] == []
        with pytest.raises(NotFound):
            statistics_document(engine.stats("ghost"))["model_stats"]

    with_engine(repo, body)


def test_backend_failure_fails_only_that_request(tmp_path: Path, with_engine: Any) -> None:
    from forwardpass.errors import InternalError

    root = tmp_path / "models"
    extra = 'parameters { key: "fail_value" value: { string_value: "13" } }'
    write_model(root, "m", config=null_config("m", extra=extra))

    async def body(engine: Engine) -> None:
        with pytest.raises(InternalError, match="fail_value"):
            await engine.infer(InferRequest("m", [int32([13, 0])]))
        ok = await engine.infer(InferRequest("m", [int32([1, 2])]))
        assert ok.outputs[0].data.tolist() == [[1, 2]]
        [stats] = statistics_document(engine.stats("m"))["model_stats"]
        assert stats["inference_stats"]["fail"]["count"] == 1
        assert stats["inference_stats"]["success"]["count"] == 1

    with_engine(root, body)
