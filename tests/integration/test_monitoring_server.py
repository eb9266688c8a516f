"""Monitoring on a real server: traffic, feedback, /fairness, /metrics, /log and
``forwardpass log`` reading the request log the server wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import onnx
import pytest
import yaml
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from modelrepo import write_model
from onnx import TensorProto, helper, numpy_helper
from rawhttp import raw_request


def _score_onnx() -> bytes:
    """input FP32 [batch, 2] → score FP32 [batch, 1] = the first column."""
    w = numpy_helper.from_array(np.array([[1.0], [0.0]], np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["score"])],
        "score",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


PROCESSING = {"inputs": [{"kind": "tabular", "to": "input", "columns": ["x", "sex"]}]}
FAIRNESS = {
    "sensitive": ["sex"],
    "sensitive_parameters": ["region"],
    "prediction_output": "score",
    "positive_label": 1,
    "threshold": 0.5,
    "min_group_size": 5,
    "bootstrap": 50,
}


def _config(name: str, monitoring: dict) -> str:
    def param(key: str, value: dict) -> str:
        text = json.dumps(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'parameters {{ key: "{key}" value {{ string_value: "{text}" }} }}\n'

    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input [{ name: "input" data_type: TYPE_FP32 dims: [2] }]\n'
        'output [{ name: "score" data_type: TYPE_FP32 dims: [1] }]\n'
        + param("processing", PROCESSING)
        + param("monitoring", monitoring)
    )


class Client:
    """JSON over HTTP, through the suite's raw client."""

    def __init__(self, address: str) -> None:
        self.address = address

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        return raw_request(self.address, method, path, data)

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path + ("?" + urlencode(params) if params else ""))

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        return self.request("POST", path, body, raw)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, start_module_server: Any
) -> Iterator[tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("monrepo")
    onnx_bytes = _score_onnx()
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
    write_model(
        root, "scored", config=_config("scored", {"fairness": FAIRNESS}), versions={1: onnx_bytes}
    )
    bad = {**FAIRNESS, "sensitive": ["race"]}
    write_model(
        root, "misnamed", config=_config("misnamed", {"fairness": bad}), versions={1: onnx_bytes}
    )
    folder = write_model(root, "plain", versions={1: onnx_bytes})
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "max_batch_size": 8,
                "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [2]}],
                "output": [{"name": "score", "data_type": "TYPE_FP32", "dims": [1]}],
                "monitoring": {"payload_sample": 1.0},
            }
        )
    )
    log_path = root.parent / "requests.db"
    yield start_module_server(root, "--no-grpc", "--request-log", str(log_path)), log_path


def _infer(client: Client, model: str, x: float, sex: float, **body: object) -> dict:
    response = client.post(
        f"/v2/models/{model}/infer",
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [x]},
                {"name": "sex", "datatype": "FP32", "shape": [1, 1], "data": [sex]},
            ],
            **body,
        },
    )
    assert response.status == 200, response.body
    return response.json()


def test_traffic_feedback_fairness_metrics_and_log(server: tuple[Any, Path]) -> None:
    proc, log_path = server
    rng = np.random.default_rng(0)
    groups, truths, preds, ids = [], [], [], []
    client = Client(proc.address)
    for i in range(80):
        sex = float(i % 2)
        x = float(rng.random())
        params = {"parameters": {"region": "north" if i % 4 < 2 else "south"}}
        body = _infer(
            client, "scored", x, sex, **({"id": f"client-{i}"} if i < 10 else {}), **params
        )
        # The client's id comes back; without one the server makes one and returns it.
        if i < 10:
            assert body["id"] == f"client-{i}"
        else:
            assert body["id"] and body["id"].count("-") == 1
        ids.append(body["id"])
        truth = int(rng.random() < (0.7 if sex else 0.4))
        groups.append(f"{int(sex)}, {params['parameters']['region']}")
        truths.append(truth)
        preds.append(int(x >= 0.5))
    assert len(set(ids)) == 80
    posted = client.post(
        "/v2/models/scored/feedback",
        [{"id": rid, "truth": t} for rid, t in zip(ids, truths, strict=True)],
    )
    assert posted.status == 200, posted.body
    assert posted.json() == {"joined": 80}

    # Feedback errors.
    unknown = client.post("/v2/models/scored/feedback", {"id": "nope", "truth": 1})
    assert unknown.status == 404 and "'nope'" in unknown.json()["error"]
    again = client.post("/v2/models/scored/feedback", {"id": ids[0], "truth": 1})
    assert again.status == 404
    extra = _infer(client, "scored", 0.9, 1.0)
    wrong = client.post("/v2/models/scored/feedback", {"id": extra["id"], "truth": "yes"})
    assert wrong.status == 400 and "must be a number" in wrong.json()["error"]
    plain = _plain_infer(client)
    no_fairness = client.post("/v2/models/plain/feedback", {"id": plain, "truth": 1})
    assert no_fairness.status == 400 and "no fairness" in no_fairness.json()["error"]
    bad_json = client.post("/v2/models/scored/feedback", raw=b"{")
    assert bad_json.status == 400

    fairness = client.get("/v2/models/scored/fairness").json()
    report = fairness["versions"]["1"]
    assert report["labelled"] == 80
    y_true, y_pred, g = np.array(truths), np.array(preds), np.array(groups)
    d = report["disparities"]
    assert d["demographic_parity_difference"]["value"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=g), abs=1e-9
    )
    assert d["equalized_odds_difference"]["value"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=g), abs=1e-9
    )
    lo, hi = d["demographic_parity_difference"]["interval"]
    assert lo <= d["demographic_parity_difference"]["value"] <= hi

    metrics = client.get("/metrics").body.decode()
    assert (
        'forwardpass_fairness_metric{group="between_groups",metric="demographic_parity_difference",model="scored",version="1"}'
        in metrics
    )
    labels = 'group="1, north",metric="count",model="scored",version="1"'
    assert "forwardpass_fairness_metric{" + labels + "} 20.0" in metrics

    rows = client.get("/v2/models/scored/log", limit="5").json()["rows"]
    assert len(rows) == 5 and rows[-1]["id"] == extra["id"]
    assert all(r["status"] == "OK" and r["total_us"] > 0 for r in rows)
    early = client.get("/v2/models/scored/log", limit="1000", since="1h").json()
    first = next(r for r in early["rows"] if r["id"] == "client-0")
    assert first["truth"] == truths[0]
    bad_limit = client.get("/v2/models/scored/log", limit="x")
    assert bad_limit.status == 400 and "limit" in bad_limit.json()["error"]
    assert client.get("/v2/models/nosuch/log").status == 404

    # A failed request is logged too, with its error code.
    failed = client.post("/v2/models/scored/infer", {"inputs": []})
    assert failed.status == 400
    rows = client.get("/v2/models/scored/log", limit="1").json()["rows"]
    assert rows[0]["status"] == "INVALID_ARG" and rows[0]["error"]

    out = subprocess.run(
        [sys.executable, "-m", "forwardpass", "log", "scored", "--request-log", str(log_path),
         "--json", "--limit", "200", "--since", "1h"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    logged = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["id"] for r in logged} >= set(ids)
    text = subprocess.run(
        [sys.executable, "-m", "forwardpass", "log", "scored", "--request-log", str(log_path),
         "--limit", "3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 3
    assert "INVALID_ARG" in text.stdout


def _plain_infer(client: Client) -> str:
    response = client.post(
        "/v2/models/plain/infer",
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
    )
    assert response.status == 200, response.body
    return response.json()["id"]


def test_a_yaml_monitoring_mapping_samples_every_payload(
    server: tuple[Any, Path],
) -> None:
    proc, _ = server
    client = Client(proc.address)
    rid = _plain_infer(client)
    rows = client.get("/v2/models/plain/log", limit="1").json()["rows"]
    assert rows[0]["id"] == rid
    assert rows[0]["payload"]["inputs"]["input"]["data"] == [1.0, 2.0]
    assert rows[0]["payload"]["outputs"]["score"]["data"] == [1.0]


def test_monitoring_naming_a_missing_column_reports_and_the_model_serves(
    server: tuple[Any, Path],
) -> None:
    proc, _ = server
    client = Client(proc.address)
    body = _infer(client, "misnamed", 0.7, 1.0)
    assert body["outputs"][0]["data"] == [pytest.approx(0.7)]
    doc = client.get("/v2/models/misnamed/fairness").json()
    assert doc["configured"] is False
    assert any("'race'" in e and "not inputs" in e for e in doc["errors"])
    # Its requests are still logged.
    rows = client.get("/v2/models/misnamed/log").json()["rows"]
    assert rows[-1]["id"] == body["id"]
    assert any("monitoring" in line and "race" in line for line in proc.log)


def test_feedback_reaches_the_worker_that_predicted(start_server: Any, tmp_path: Path) -> None:
    """``serve --workers 2``: a label posted to any worker joins the prediction on the worker
    that made it (forwarded over the cluster's peer channel), and the shared log records it."""
    root = tmp_path / "models"
    write_model(
        root, "scored", config=_config("scored", {"fairness": FAIRNESS}),
        versions={1: _score_onnx()},
    )  # fmt: skip
    log_path = tmp_path / "requests.db"
    proc = start_server(root, "--no-grpc", "--workers", "2", "--request-log", str(log_path))
    client = Client(proc.address)
    ids = [_infer(client, "scored", 0.1 * (i % 10), float(i % 2))["id"] for i in range(40)]
    feedback = [{"id": rid, "truth": i % 2} for i, rid in enumerate(ids)]
    answer = client.post("/v2/models/scored/feedback", feedback)
    assert answer.status == 200, answer.body
    assert answer.json() == {"joined": 40}
    again = client.post("/v2/models/scored/feedback", feedback[:1])
    assert again.status == 404 and repr(ids[0]) in again.json()["error"]
    unknown = client.post("/v2/models/scored/feedback", {"id": "nobody", "truth": 1})
    assert unknown.status == 404 and "'nobody'" in unknown.json()["error"]
    rows = client.get("/v2/models/scored/log", limit="1000").json()["rows"]
    labelled = {r["id"]: r["truth"] for r in rows if r["truth"] is not None}
    assert labelled == {f["id"]: f["truth"] for f in feedback}
