"""The engine's monitoring tap: ids, records by stage, a raising monitor that never fails a
request, models opting out, and monitoring declarations the model does not match."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_builders import null_config, run_with_engine, write_model

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.monitor.hub import Record
from forwardpass.monitor.requestlog import read_rows
from forwardpass.monitor.settings import read_monitoring
from forwardpass.types import InferRequest, Tensor


def _monitoring(value: dict[str, Any]) -> str:
    text = json.dumps(value).replace('"', '\\"')
    return f'parameters {{ key: "monitoring" value {{ string_value: "{text}" }} }}'


def _request(model: str, rid: str = "") -> InferRequest:
    return InferRequest(
        model_name=model,
        inputs=[Tensor("a", DataType.INT32, np.array([[1, 2]], np.int32))],
        id=rid,
    )


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.records: list[Record] = []

    def observe(self, records: list[Record]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        pass


class Explode:
    name = "explode"

    def observe(self, records: list[Record]) -> None:
        raise RuntimeError("monitor bug")

    def close(self) -> None:
        pass


def test_records_reach_sinks_and_a_raising_sink_fails_no_request(tmp_path: Path) -> None:
    write_model(tmp_path, "echo", config=null_config("echo"), versions=(1,))
    write_model(
        tmp_path,
        "quiet",
        config=null_config("quiet", extra=_monitoring({"enable": False})),
        versions=(1,),
    )
    collect = Collect()

    async def body(engine: Any) -> None:
        engine.monitoring.add_sink(Explode())
        engine.monitoring.add_sink(collect)
        first = await engine.infer(_request("echo", "mine"))
        second = await engine.infer(_request("echo"))
        await engine.infer(_request("quiet"))
        with pytest.raises(InvalidArgument, match="missing required input"):
            await engine.infer(InferRequest(model_name="echo", inputs=[]))
        assert first.id == "mine" and second.id and second.id != "mine"
        assert engine.monitoring.hub.flush()
        assert engine.monitoring.hub.disabled == {("explode", "echo"): "RuntimeError: monitor bug"}
        doc = engine.monitoring.fairness_document("echo")
        assert doc["disabled"] == {"explode": "RuntimeError: monitor bug"}

    run_with_engine(tmp_path, body, request_log=str(tmp_path / "log.db"))
    assert [r.model for r in collect.records] == ["echo"] * 3  # "quiet" opted out
    ok = collect.records[0]
    assert ok.status == "OK" and ok.version == "1" and ok.total_ns > 0
    assert ok.stages.batch_size == 1 and ok.stages.compute_ns > 0
    np.testing.assert_array_equal(ok.inputs["a"], [[1, 2]])
    np.testing.assert_array_equal(ok.outputs["b"], [[1, 2]])
    failed = collect.records[2]
    assert (
        failed.status == "INVALID_ARG" and "missing required" in failed.error and not failed.outputs
    )
    rows = read_rows(tmp_path / "log.db", "echo")
    assert [r.status for r in rows] == ["OK", "OK", "INVALID_ARG"] and rows[0].id == "mine"


def test_without_a_request_log_or_monitors_nothing_is_watched(tmp_path: Path) -> None:
    write_model(tmp_path, "echo", config=null_config("echo"), versions=(1,))

    async def body(engine: Any) -> None:
        response = await engine.infer(_request("echo"))
        assert response.id == ""  # Triton's behaviour: no id asked, none answered
        handle = engine.handle("echo")
        assert engine.monitoring.watches(handle) is False

    run_with_engine(tmp_path, body)


def test_a_bad_monitoring_declaration_is_reported_and_the_model_serves(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "echo",
        config=null_config(
            "echo",
            extra=_monitoring(
                {"fairness": {"sensitive": ["a"], "prediction_output": "nope", "positive_label": 1}}
            ),
        ),
        versions=(1,),
    )
    write_model(
        tmp_path,
        "garbled",
        config=null_config("garbled", extra=_monitoring({"payload_sample": 3})),
        versions=(1,),
    )

    async def body(engine: Any) -> None:
        await engine.infer(_request("echo"))
        await engine.infer(_request("garbled"))
        doc = engine.monitoring.fairness_document("echo")
        assert doc["configured"] is False and "'nope' is not an output" in doc["errors"][0]
        garbled = engine.monitoring.fairness_document("garbled")["errors"]
        assert "'payload_sample' must be a number in [0.0, 1.0], got 3" in garbled[0]

    run_with_engine(tmp_path, body, request_log=str(tmp_path / "log.db"))
    assert len(read_rows(tmp_path / "log.db", "garbled")) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "not valid JSON"),
        ('{"colour": 1}', "unknown key"),
        ('{"enable": "yes"}', "'enable' must be true or false"),
        ('{"fairness": {"prediction_output": "y", "positive_label": 1}}', "sensitive"),
        ('{"fairness": {"sensitive": ["s"], "positive_label": 1}}', "prediction_output"),
        ('{"fairness": {"sensitive": ["s"], "prediction_output": "y"}}', "positive_label"),
        (
            '{"fairness": {"sensitive": "s", "prediction_output": "y", "positive_label": "a",'
            ' "threshold": 0.5}}',
            "must be a number",
        ),
        (
            '{"fairness": {"sensitive": "s", "prediction_output": "y", "positive_label": 1,'
            ' "window": 0}}',
            "'window' must be an integer >= 1",
        ),
        ('{"drift": {"window": 20, "correction": "holm"}}', "must be bonferroni or fdr"),
        ('{"drift": [1]}', "monitoring.drift must be a mapping"),
    ],
)
def test_monitoring_declaration_errors(value: str, message: str) -> None:
    # The section as a whole raises; a broken sub-section turns off that monitor only.
    try:
        settings = read_monitoring({"monitoring": value})
    except InvalidModelConfig as exc:
        assert re.search(message, exc.message)
        return
    assert settings is not None and len(settings.errors) == 1
    ((section, error),) = settings.errors.items()
    assert re.search(message, error) and settings.declares(section)
    assert getattr(settings, section) is None


def test_a_broken_sub_section_leaves_the_other_monitor() -> None:
    settings = read_monitoring(
        {"monitoring": '{"drift": {"window": 3}, "fairness": {"sensitive": "s",'
         ' "prediction_output": "y", "positive_label": 1}}'}
    )  # fmt: skip
    assert settings is not None and settings.fairness is not None and settings.drift is None
    assert settings.errors == {"drift": "monitoring.drift.window: must be at least 10 rows, got 3"}


def test_monitoring_declaration_defaults() -> None:
    assert read_monitoring({}) is None
    settings = read_monitoring(
        {"monitoring": '{"fairness": {"sensitive": "s", "prediction_output": "y",'
         ' "positive_label": "yes"}}'}
    )  # fmt: skip
    assert settings is not None and settings.fairness is not None
    assert settings.fairness.sensitive == ("s",) and settings.fairness.min_group_size == 30


def test_a_drift_section_beside_fairness_is_not_an_error() -> None:
    """``drift`` belongs to the same ``monitoring`` section (the drift monitor reads it): the
    request log and fairness must not reject it, or a model watched for drift loses them."""
    settings = read_monitoring(
        {"monitoring": '{"drift": {"window": 40}, "payload_sample": 0.5, "fairness": '
         '{"sensitive": "s", "prediction_output": "y", "positive_label": 1}}'}
    )  # fmt: skip
    assert settings is not None and settings.payload_sample == 0.5
    assert settings.fairness is not None and settings.fairness.sensitive == ("s",)
