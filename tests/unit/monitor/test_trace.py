"""Tracing: settings validation and Triton's override/clear rules, the sampler, the writer's
files in Triton's JSON format, and the engine's timestamps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from model_builders import run_with_engine

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument
from forwardpass.monitor.trace import (
    CLEAR,
    Tracer,
    TraceSettings,
    parse_trace_update,
)
from forwardpass.protocol.documents import trace_settings_document
from forwardpass.types import InferRequest, Tensor

# -- parsing --------------------------------------------------------------------------------------


def test_parse_accepts_triton_strings_lists_and_null() -> None:
    update = parse_trace_update(
        {
            "trace_level": ["TENSORS", "TIMESTAMPS"],
            "trace_rate": "12",
            "trace_count": "-1",
            "log_frequency": 34,
        }
    )
    assert update == {
        "level": ("TIMESTAMPS", "TENSORS"),
        "rate": 12,
        "count": -1,
        "log_frequency": 34,
    }
    assert parse_trace_update({"trace_level": ["OFF"]}) == {"level": ()}
    cleared = parse_trace_update({"trace_rate": None, "trace_level": []})
    assert cleared == {"rate": CLEAR, "level": CLEAR}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"trace_file": "x.json"}, "trace file location can not be updated through network"),
        ({"trace_file": None}, "trace file location can not be updated through network"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "Expect only one trace level 'OFF' is specified"),
        ({"trace_level": ["TIMESTAMP"]}, "unknown trace level 'TIMESTAMP'"),
        ({"trace_level": [1]}, "'trace_level' must be an array of strings"),
        ({"trace_rate": "ten"}, "Unable to parse 'trace_rate', got: ten"),
        ({"trace_rate": "12abc"}, "Unable to parse 'trace_rate', got: 12abc"),
        ({"trace_rate": True}, "Unable to parse 'trace_rate'"),
        (
            {"trace_rate": "-1"},
            "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: -1",
        ),
        ({"trace_count": "-2"}, "Unable to parse 'trace_count'. Expecting value >= -1, got:-2"),
        (
            {"trace_count": str(2**31)},
            "Unable to parse 'trace_count', value is out of range [ -1, 2147483647 ]",
        ),
        ({"log_frequency": "-5"}, "Unable to parse 'log_frequency', value is out of range"),
        ({"trace_mode": "jaeger"}, "Unable to parse 'trace_mode', got: 'jaeger'"),
        ({"trace_mode": 1}, "Unable to parse 'trace_mode'"),
        ({"trace_sampler": "x"}, "unknown trace setting 'trace_sampler'"),
    ],
)
def test_parse_rejects_with_precise_messages(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_trace_update(settings)
    assert message in info.value.message


def test_parse_rejects_a_non_object() -> None:
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        parse_trace_update(["trace_rate"])  # type: ignore[arg-type]


# -- settings: global, per model, clear ------------------------------------------------------


def document(tracer: Tracer, model: str = "") -> dict[str, Any]:
    return trace_settings_document(tracer.settings(model))


def started(tmp_path: Path, **kw: Any) -> Tracer:
    defaults = dict(level=("TIMESTAMPS",), rate=1, file=str(tmp_path / "global.json"))
    defaults.update(kw)
    return Tracer(TraceSettings(**defaults))


def test_triton_clear_semantics(tmp_path: Path) -> None:
    """Triton's own test: a model's fields override the global ones; clearing a global field
    goes back to its start-up value, clearing a model's field to the global value."""
    tracer = started(tmp_path)
    file = str(tmp_path / "global.json")
    initial = {
        "trace_file": file,
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "1",
        "trace_count": "-1",
        "log_frequency": "0",
        "trace_mode": "triton",
    }
    assert document(tracer) == initial
    assert document(tracer, "simple") == initial

    tracer.update("simple", parse_trace_update({"trace_rate": "12", "log_frequency": "34"}))
    tracer.update(
        "", parse_trace_update({"trace_rate": "56", "trace_count": "78", "trace_level": ["OFF"]})
    )
    assert document(tracer, "simple") == {
        **initial,
        "trace_level": ["OFF"],
        "trace_rate": "12",
        "trace_count": "78",
        "log_frequency": "34",
    }
    cleared = tracer.update("", parse_trace_update({"trace_rate": None, "trace_count": None}))
    assert trace_settings_document(cleared) == {**initial, "trace_level": ["OFF"]}
    assert document(tracer, "simple") == {
        **initial,
        "trace_level": ["OFF"],
        "trace_rate": "12",
        "log_frequency": "34",
    }
    model = tracer.update("simple", parse_trace_update({"trace_rate": None, "trace_level": None}))
    assert trace_settings_document(model) == {
        **initial,
        "trace_level": ["OFF"],
        "log_frequency": "34",
    }
    # Clearing the model's last own field: it follows the global setting entirely again.
    tracer.update("simple", parse_trace_update({"log_frequency": None}))
    tracer.update("", parse_trace_update({"trace_rate": "7"}))
    assert document(tracer, "simple")["trace_rate"] == "7"


def test_invalid_setting_is_rejected_and_nothing_changes(tmp_path: Path) -> None:
    tracer = Tracer(TraceSettings())  # no trace file
    with pytest.raises(InvalidArgument) as info:
        tracer.update("", parse_trace_update({"trace_level": ["TIMESTAMPS"]}))
    assert info.value.message == (
        "Attempting to set invalid trace setting :trace file name is not given"
    )
    assert tracer.settings().level == ()
    assert not tracer.active
    tracer = started(tmp_path)
    with pytest.raises(InvalidArgument, match="sample rate must be non-zero"):
        tracer.update("m", parse_trace_update({"trace_rate": "0"}))
    assert tracer.settings("m").rate == 1
    # A rate of 0 is accepted when it also turns tracing off.
    tracer.update("m", parse_trace_update({"trace_rate": "0", "trace_level": ["OFF"]}))
    assert tracer.settings("m").rate == 0


def test_active_only_while_some_scope_traces(tmp_path: Path) -> None:
    tracer = started(tmp_path, level=())
    assert not tracer.active
    tracer.update("m", parse_trace_update({"trace_level": ["TIMESTAMPS"]}))
    assert tracer.active
    assert tracer.sample("other") is None  # the global setting is still OFF
    assert tracer.sample("m") is not None
    tracer.update("m", parse_trace_update({"trace_level": None}))
    assert not tracer.active


# -- sampler --------------------------------------------------------------------------------------


def test_rate_samples_every_nth_request(tmp_path: Path) -> None:
    tracer = started(tmp_path, rate=3)
    picked = [i for i in range(1, 10) if tracer.sample("m") is not None]
    assert picked == [3, 6, 9]


def test_count_runs_down_then_tracing_stops(tmp_path: Path) -> None:
    tracer = started(tmp_path, count=2)
    traces = [tracer.sample("m") for _ in range(5)]
    assert [t is not None for t in traces] == [True, True, False, False, False]
    assert document(tracer)["trace_count"] == "0"
    assert not tracer.active
    # Setting a count again starts a fresh scope that traces again.
    tracer.update("", parse_trace_update({"trace_count": "1"}))
    assert tracer.active and tracer.sample("m") is not None


def test_model_scope_samples_on_its_own(tmp_path: Path) -> None:
    tracer = started(tmp_path, rate=2)
    tracer.update("m", parse_trace_update({"trace_rate": "1"}))
    assert all(tracer.sample("m") is not None for _ in range(3))
    assert [tracer.sample("g") is not None for _ in range(4)] == [False, True, False, True]


# -- writer ---------------------------------------------------------------------------------------


def finish(tracer: Tracer, model: str = "m", request_id: str = "") -> int:
    trace = tracer.sample(model)
    assert trace is not None
    trace.model_version = "1"
    trace.request_id = request_id
    trace.stamp("REQUEST_START")
    trace.stamp("REQUEST_END")
    trace.finish()
    return trace.id


def test_plain_file_is_triton_json_and_valid_while_running(tmp_path: Path) -> None:
    tracer = started(tmp_path)
    first = finish(tracer, request_id="r1")
    assert tracer.writer.flush()
    path = tmp_path / "global.json"
    records = orjson.loads(path.read_bytes())
    assert records[0] == {"id": first, "model_name": "m", "model_version": 1, "request_id": "r1"}
    names = [r["timestamps"][0]["name"] for r in records[1:]]
    assert names == ["REQUEST_START", "REQUEST_END"]
    assert all(list(r) == ["id", "timestamps"] and r["id"] == first for r in records[1:])
    second = finish(tracer)
    tracer.close()
    records = orjson.loads(path.read_bytes())
    assert [r["id"] for r in records] == [first] * 3 + [second] * 3
    assert "request_id" not in records[3]  # Triton leaves an empty request id out


def test_log_frequency_rotates_into_indexed_files(tmp_path: Path) -> None:
    tracer = started(tmp_path, log_frequency=2)
    ids = [finish(tracer) for _ in range(5)]
    assert tracer.writer.flush()
    base = tmp_path / "global.json"
    assert not base.exists()
    groups = [orjson.loads(Path(f"{base}.{i}").read_bytes()) for i in (0, 1)]
    assert [sorted({r["id"] for r in g}) for g in groups] == [ids[0:2], ids[2:4]]
    assert not Path(f"{base}.2").exists()  # the fifth waits for its group
    tracer.close()  # ... and is written at shutdown
    assert {r["id"] for r in orjson.loads(Path(f"{base}.2").read_bytes())} == {ids[4]}


def test_count_exhausted_writes_the_last_group(tmp_path: Path) -> None:
    tracer = started(tmp_path, log_frequency=10, count=3)
    for _ in range(3):
        finish(tracer)
    assert tracer.writer.flush()
    assert len({r["id"] for r in orjson.loads(Path(f"{tmp_path}/global.json.0").read_bytes())}) == 3


def test_trace_without_version_is_not_written(tmp_path: Path) -> None:
    tracer = started(tmp_path)
    trace = tracer.sample("unknown")
    assert trace is not None
    trace.stamp("HTTP_RECV_END")
    trace.finish()  # the engine never found the model
    tracer.close()
    assert not (tmp_path / "global.json").exists()


def test_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    tracer = Tracer(
        TraceSettings(level=("TIMESTAMPS",), rate=1, file=str(tmp_path / "t.json")), max_queued=1
    )
    blocker = tracer.writer._queue  # fill the queue before the thread can drain it
    tracer.writer._thread = object()  # type: ignore[assignment]  # pretend it runs
    blocker.put_nowait("busy")
    finish(tracer)
    assert tracer.writer.dropped == 1


def test_unwritable_file_is_logged_not_raised(tmp_path: Path) -> None:
    tracer = started(tmp_path, file=str(tmp_path / "missing" / "t.json"))
    finish(tracer)
    assert tracer.writer.flush()
    assert tracer.writer.errors == 1
    tracer.close()


def test_tensors_level_records_tensors_only(tmp_path: Path) -> None:
    tracer = started(tmp_path, level=("TENSORS",))
    trace = tracer.sample("m")
    assert trace is not None
    trace.model_version = "1"
    trace.stamp("REQUEST_START")  # not recorded: TIMESTAMPS is off
    trace.tensor("TENSOR_QUEUE_INPUT", "x", DataType.FP32, np.array([[0.5, 2.0]], np.float32))
    trace.tensor("TENSOR_QUEUE_INPUT", "s", DataType.BYTES, np.array([b"hi"], dtype=object))
    trace.finish()
    tracer.close()
    records = orjson.loads((tmp_path / "global.json").read_bytes())
    assert records[1] == {
        "id": trace.id,
        "activity": "TENSOR_QUEUE_INPUT",
        "tensor": {"name": "x", "data": "0.5,2.0", "shape": "1,2", "dtype": "FP32"},
    }
    assert records[2]["tensor"]["data"] == '\\"hi\\"'
    assert len(records) == 3


# -- the engine's timestamps ----------------------------------------------------------------------

ORDER = [
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
]


def test_engine_stamps_every_stage_in_order(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"

    async def body(engine: Any) -> None:
        assert engine.tracer.active
        for i in range(4):
            x = np.full((1, 3), i, np.float32)
            await engine.infer(InferRequest("add", [Tensor("x", DataType.FP32, x)], id=f"req{i}"))

    run_with_engine(
        repo, body, trace_file=str(path), trace_level=("TIMESTAMPS",), trace_rate=2
    )  # the engine's stop writes what is left
    records = orjson.loads(path.read_bytes())
    headers = [r for r in records if "model_name" in r]
    assert [h["request_id"] for h in headers] == ["req1", "req3"]  # every 2nd request
    assert all(h["model_name"] == "add" and h["model_version"] == 1 for h in headers)
    for header in headers:
        stamps = [
            r["timestamps"][0] for r in records if r["id"] == header["id"] and "timestamps" in r
        ]
        assert [s["name"] for s in stamps] == ORDER
        ns = [s["ns"] for s in stamps]
        assert ns == sorted(ns) and ns[0] > 0


def test_engine_failure_still_ends_the_trace(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"

    async def body(engine: Any) -> None:
        bad = np.zeros((1, 5), np.float32)  # add takes [3]
        with pytest.raises(InvalidArgument):
            await engine.infer(InferRequest("add", [Tensor("x", DataType.FP32, bad)]))

    run_with_engine(repo, body, trace_file=str(path), trace_level=("TIMESTAMPS",), trace_rate=1)
    names = [
        r["timestamps"][0]["name"] for r in orjson.loads(path.read_bytes()) if "timestamps" in r
    ]
    assert names == ["REQUEST_START", "REQUEST_END"]


def test_engine_tensors_level(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"

    async def body(engine: Any) -> None:
        x = np.array([[1.0, 2.0, 3.0]], np.float32)
        await engine.infer(InferRequest("add", [Tensor("x", DataType.FP32, x)]))

    run_with_engine(repo, body, trace_file=str(path), trace_level=("TENSORS",), trace_rate=1)
    tensors = [r for r in orjson.loads(path.read_bytes()) if "activity" in r]
    assert [(t["activity"], t["tensor"]["name"]) for t in tensors] == [
        ("TENSOR_QUEUE_INPUT", "x"),
        ("TENSOR_BACKEND_OUTPUT", "y"),
    ]
    assert tensors[1]["tensor"] == {
        "name": "y",
        "data": "2.0,4.0,6.0",
        "shape": "1,3",
        "dtype": "FP32",
    }


def test_config_checks_start_up_settings() -> None:
    from forwardpass.config import ServerConfig

    with pytest.raises(InvalidArgument, match="trace file name is not given"):
        ServerConfig(trace_level=("TIMESTAMPS",)).trace_settings()
    with pytest.raises(InvalidArgument, match="unknown trace level 'LOUD'"):
        ServerConfig(trace_level=("LOUD",)).trace_settings()
    assert ServerConfig().trace_settings() == TraceSettings()
