"""Drift monitoring through the engine: the CLI's reference, requests, /monitor, /metrics,
and the bad inputs (no reference, a mismatched one, settings naming absent features)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from model_builders import run_with_engine

from drift_models import COLUMNS, reference_rows, write_scored
from forwardpass.cli.monitor import monitor
from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.types import InferRequest, Tensor

DRIFT = {"drift": {"window": 20, "step": 10}}


def _reference(root: Path, name: str = "scored", rows: np.ndarray | None = None) -> Any:
    data = root.parent / f"{name}-train.npz"
    np.savez(data, x=reference_rows() if rows is None else rows)
    result = CliRunner().invoke(
        monitor,
        ["reference", name, "--data", str(data), "--model-repository", str(root), "--json"],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _request(rows: np.ndarray, name: str = "scored") -> InferRequest:
    return InferRequest(
        model_name=name,
        inputs=[
            Tensor(c, DataType.FP32, rows[:, j : j + 1].astype(np.float32))
            for j, c in enumerate(COLUMNS)
        ],
    )


async def _send(engine: Any, rows: np.ndarray, per: int = 1, name: str = "scored") -> None:
    for start in range(0, len(rows), per):
        await engine.infer(_request(rows[start : start + per], name))
    await asyncio.get_running_loop().run_in_executor(None, engine.monitoring.hub.flush)


def _report(engine: Any, name: str = "scored", version: str = "") -> dict[str, Any]:
    return engine.monitoring.monitor_document(*engine.version(name, version))


def test_cli_stores_the_reference(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)
    meta = _reference(root)
    folder = root / "scored" / "monitor"
    assert (folder / "reference.npz").is_file() and (folder / "reference.json").is_file()
    assert meta["rows"] == 400 and meta["version"] == 1
    assert meta["features"] == {
        "a": "numeric", "b": "numeric", "c": "numeric",
        "probabilities.class": "categorical", "probabilities.score": "numeric",
        "label": "categorical",
    }  # fmt: skip
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "dims": [3]}]
    with np.load(folder / "reference.npz") as stored:
        assert np.allclose(stored["feature/b"], reference_rows()[:, 1])


def test_cli_rejects_data_that_does_not_fit_the_model(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 4), np.float32))
    result = CliRunner().invoke(
        monitor, ["reference", "scored", "--data", str(bad), "--model-repository", str(root)]
    )
    assert result.exit_code != 0
    assert "input 'x' has shape [10, 4], but the model takes [3] per sample" in result.output
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, y=np.zeros((10, 3), np.float32))
    result = CliRunner().invoke(
        monitor, ["reference", "scored", "--data", str(wrong), "--model-repository", str(root)]
    )
    assert result.exit_code != 0 and "has no array for input(s) ['x']" in result.output
    result = CliRunner().invoke(
        monitor, ["reference", "absent", "--data", str(wrong), "--model-repository", str(root)]
    )
    assert result.exit_code != 0 and "'absent' is not in" in result.output


def test_traffic_is_monitored_and_drift_alarms(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)
    _reference(root)
    rng = np.random.default_rng(1)

    async def body(engine: Any) -> None:
        await _send(engine, rng.normal(size=(20, 3)), per=1)
        report = _report(engine)
        assert report["enabled"] and report["error"] is None
        assert report["window"]["rows_seen"] == 20 and report["observed_requests"] == 20
        assert {f["feature"] for f in report["features"]} == {
            "a",
            "b",
            "c",
            "probabilities.class",
            "probabilities.score",
            "label",
        }
        shifted = rng.normal(size=(40, 3))
        shifted[:, 1] += 3.0
        await _send(engine, shifted, per=4)  # a request of 4 rows counts 4 rows
        report = _report(engine)
        assert report["alarm"]
        assert "b" in [f["feature"] for f in report["features"] if f["drift"]]
        assert len(report["history"]) == 5
        from forwardpass.monitor.metrics import metrics_renderer

        text = metrics_renderer(engine)().decode()
        assert 'forwardpass_drift_alarm{model="scored",version="1"} 1.0' in text
        assert 'forwardpass_drift_score{feature="b",model="scored",test="ks",version="1"}' in text
        assert 'feature="b",model="scored",test="psi"' in text

    run_with_engine(root, body)
    # The state is beside the model: a restarted server carries on from it.
    assert (root / "scored" / "monitor" / "state" / "drift-v1.json").is_file()

    async def again(engine: Any) -> None:
        report = _report(engine)
        assert report["window"]["rows_seen"] == 60 and report["alarm"]
        assert len(report["history"]) == 5

    run_with_engine(root, again)


def test_settings_naming_absent_features_leave_the_model_serving(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring={"drift": {"window": 20, "step": 10, "features": ["a", "zz"]}})
    _reference(root)

    async def body(engine: Any) -> None:
        response = await engine.infer(_request(np.zeros((1, 3))))
        assert {t.name for t in response.outputs} == {"probabilities", "label"}
        await asyncio.get_running_loop().run_in_executor(None, engine.monitoring.hub.flush)
        report = _report(engine)
        assert not report["enabled"]
        assert "names feature(s) ['zz'] that model 'scored' does not have" in report["error"]

    run_with_engine(root, body)


def test_missing_and_mismatched_reference(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)

    async def missing(engine: Any) -> None:
        await engine.infer(_request(np.zeros((1, 3))))
        report = _report(engine)
        assert "no reference profile" in report["error"]
        assert "forwardpass monitor reference scored --data PATH" in report["error"]

    run_with_engine(root, missing)
    _reference(root)
    meta_file = root / "scored" / "monitor" / "reference.json"
    meta = json.loads(meta_file.read_text())
    meta["inputs"] = [
        {"name": "x", "datatype": "FP32", "dims": [4]},
        {"name": "y", "datatype": "FP32", "dims": [1]},
    ]
    meta_file.write_text(json.dumps(meta))

    async def mismatched(engine: Any) -> None:
        await engine.infer(_request(np.zeros((1, 3))))
        error = _report(engine)["error"]
        assert "does not match model 'scored'" in error
        assert "input 'y' is in the reference but not in the model" in error
        assert "input 'x' was FP32 [4] in the reference, the model takes FP32 [3]" in error

    run_with_engine(root, mismatched)


def test_model_without_drift_monitoring(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring={"payload_sample": 0.01})

    async def body(engine: Any) -> None:
        handle, _ = engine.version("scored")
        assert engine.monitoring.stages(handle) is None  # not watched: no request log either
        assert not engine.monitoring.drift.declared("scored")
        with pytest.raises(InvalidArgument, match="has no drift monitoring configured"):
            _report(engine)

    run_with_engine(root, body)


def test_monitoring_as_a_yaml_mapping(tmp_path: Path) -> None:
    from forwardpass.monitor.settings import drift_settings
    from forwardpass.repository import ModelRepository

    root = tmp_path / "models"
    folder = write_scored(root)
    config = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").unlink()
    del config
    (folder / "config.yaml").write_text(
        "backend: onnxruntime\nmax_batch_size: 8\n"
        "input: [{name: x, data_type: TYPE_FP32, dims: [3]}]\n"
        "output: [{name: probabilities, data_type: TYPE_FP32, dims: [2]}]\n"
        "monitoring:\n  drift:\n    window: 30\n    correction: fdr\n"
    )
    settings = drift_settings(ModelRepository(root).read("scored").config.parameters)
    assert settings is not None and settings.window == 30 and settings.correction == "fdr"
    (folder / "config.yaml").write_text(
        "backend: onnxruntime\nmonitoring: [1, 2]\n"
        "input: [{name: x, data_type: TYPE_FP32, dims: [3]}]\n"
        "output: [{name: probabilities, data_type: TYPE_FP32, dims: [2]}]\n"
    )
    with pytest.raises(InvalidModelConfig, match=r"monitoring.*must be a mapping of monitors"):
        ModelRepository(root).read("scored")


def test_a_failing_monitor_never_fails_a_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)
    _reference(root)

    def broken(*_: Any) -> Any:
        raise ValueError("the profiler broke")

    async def body(engine: Any) -> None:
        engine.monitoring.watches(engine.handle("scored"))  # reads the model's declaration
        monitor = engine.monitoring.drift.monitor("scored", 1)
        monitor.profiler.profile = broken
        for _ in range(5):
            response = await engine.infer(_request(np.ones((2, 3))))
            assert {t.name for t in response.outputs} == {"probabilities", "label"}
        await asyncio.get_running_loop().run_in_executor(None, engine.monitoring.hub.flush)
        report = _report(engine)
        assert not report["enabled"]
        assert report["error"] == "drift monitor disabled: ValueError: the profiler broke"
        assert report["disabled"] == {"drift": "ValueError: the profiler broke"}
        assert "drift" not in report["sinks"]

    run_with_engine(root, body)
    assert "the profiler broke" in caplog.text


def test_malformed_monitoring_section_and_damaged_reference(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring='{"drift": {"window": 20, "correction": "holm"}}')
    write_scored(root, "damaged", monitoring=DRIFT)
    _reference(root, "damaged")
    npz = root / "damaged" / "monitor" / "reference.npz"
    npz.write_bytes(npz.read_bytes() + b"x")

    async def body(engine: Any) -> None:
        await engine.infer(_request(np.zeros((1, 3))))
        report = _report(engine)
        assert not report["enabled"]
        assert "monitoring.drift.correction: must be bonferroni or fdr" in report["error"]
        await engine.infer(_request(np.zeros((1, 3)), "damaged"))
        error = _report(engine, "damaged")["error"]
        assert "reference.npz does not match reference.json (sha256 differs)" in error

    run_with_engine(root, body)


def test_cache_hits_are_logged_and_monitored(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring={**DRIFT, "payload_sample": 1.0}, response_cache=True)
    _reference(root)
    rows = np.random.default_rng(3).normal(size=(10, 3))
    log_path = tmp_path / "log.db"

    async def body(engine: Any) -> None:
        first = [await engine.infer(_request(rows[i : i + 1])) for i in range(10)]
        again = [await engine.infer(_request(rows[i : i + 1])) for i in range(10)]
        assert engine.cache.hits == 10
        for a, b in zip(first, again, strict=True):
            assert a.outputs[0].data.tolist() == b.outputs[0].data.tolist()
        await asyncio.get_running_loop().run_in_executor(None, engine.monitoring.hub.flush)
        report = _report(engine)
        # The hits are requests too: the drift window counts them, with the profile of the
        # request that filled the cache entry.
        assert report["window"]["rows_seen"] == 20 and report["observed_requests"] == 20
        assert report["cache_hits_unprofiled"] == 0
        logged = engine.monitoring.log_rows("scored", None, 100)
        assert len(logged) == 20 and [r["cached"] for r in logged] == [False] * 10 + [True] * 10
        by_id = {r["id"]: r for r in logged}
        for a, b in zip(first, again, strict=True):
            original, hit = by_id[a.id]["payload"], by_id[b.id]["payload"]
            assert hit["outputs"] == original["outputs"]  # the cached outputs are logged
            assert hit["inputs"] == original["inputs"]

    run_with_engine(root, body, request_log=str(log_path), response_cache_bytes=1 << 20)


def test_drift_alarms_are_written_to_the_request_log(tmp_path: Path) -> None:
    from forwardpass.cli.log import log as log_command

    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)
    _reference(root)
    rng = np.random.default_rng(1)
    log_path = tmp_path / "log.db"

    async def body(engine: Any) -> None:
        await _send(engine, rng.normal(size=(20, 3)), per=4)
        assert engine.monitoring.log_rows("scored", None, 100, "events") == []
        shifted = rng.normal(size=(40, 3))
        shifted[:, 1] += 3.0
        await _send(engine, shifted, per=4)
        assert _report(engine)["alarm"]
        events = engine.monitoring.log_rows("scored", None, 100, "events")
        assert [e["kind"] for e in events] == ["drift_alarm"]
        assert events[0]["version"] == "1" and "b" in events[0]["detail"]["features"]
        assert events[0]["detail"]["p_value"]["b"] < 0.01
        both = engine.monitoring.log_rows("scored", None, 1000, "all")
        assert len(both) == 16 and both[-1]["kind"] in ("request", "drift_alarm")
        assert [d["time"] for d in both] == sorted(d["time"] for d in both)
        with pytest.raises(InvalidArgument, match="kind must be one of"):
            engine.monitoring.log_rows("scored", None, 10, "alarms")

    run_with_engine(root, body, request_log=str(log_path))
    out = CliRunner().invoke(log_command, ["scored", "--request-log", str(log_path)])
    assert out.exit_code == 0, out.output
    alarm_lines = [line for line in out.output.splitlines() if "DRIFT_ALARM" in line]
    assert len(alarm_lines) == 1 and "features=" in alarm_lines[0] and "b" in alarm_lines[0]
    out = CliRunner().invoke(
        log_command, ["scored", "--request-log", str(log_path), "--kind", "events", "--json"]
    )
    assert [json.loads(line)["kind"] for line in out.output.splitlines()] == ["drift_alarm"]


def test_the_drift_monitor_is_built_when_the_model_loads(tmp_path: Path) -> None:
    """The reference, profiler and scipy are loaded with the model, not on the monitor
    hub's thread while the first requests are served."""
    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)
    _reference(root)

    async def body(engine: Any) -> None:
        slots = engine.monitoring.drift._slots
        assert ("scored", 1) in slots and slots[("scored", 1)].monitor is not None
        await _send(engine, np.zeros((3, 3)))
        assert slots[("scored", 1)].monitor.observed == 3  # the same monitor, not rebuilt

    run_with_engine(root, body)


def test_a_model_without_a_reference_loads_and_reports_why(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_scored(root, monitoring=DRIFT)

    async def body(engine: Any) -> None:
        assert engine.handle("scored").versions
        assert "no reference profile" in _report(engine)["error"]

    run_with_engine(root, body)
