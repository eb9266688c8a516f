"""Drift monitoring end to end: a real server, a reference built with the CLI, traffic over
HTTP, ``/v2/models/M/monitor`` and ``/metrics``, and the state kept across a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from drift_models import COLUMNS, reference_rows, write_scored


def _get(server: Any, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"{server.url}{path}", timeout=10) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    text = body.decode()
    return status, json.loads(text) if path != "/metrics" else text


def _infer(server: Any, rows: np.ndarray) -> dict[str, Any]:
    body = {
        "inputs": [
            {"name": c, "shape": [len(rows), 1], "datatype": "FP32", "data": rows[:, j].tolist()}
            for j, c in enumerate(COLUMNS)
        ]
    }
    request = urllib.request.Request(
        f"{server.url}/v2/models/scored/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _wait_rows(server: Any, rows: int, path: str = "/v2/models/scored/monitor") -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, report = _get(server, path)
        assert status == 200, report
        if report["window"]["rows_seen"] >= rows:
            return report
        time.sleep(0.05)
    raise AssertionError(f"the monitor saw {report['window']['rows_seen']} of {rows} rows")


def _build_reference(root: Path, tmp_path: Path) -> str:
    """``forwardpass monitor reference scored`` from the training rows; its output."""
    data = tmp_path / "train.npz"
    np.savez(data, x=reference_rows())
    built = subprocess.run(
        [sys.executable, "-m", "forwardpass", "monitor", "reference", "scored",
         "--data", str(data), "--model-repository", str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return built.stdout


def test_drift_over_a_real_server(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    # The fairness section names a column the model lacks: the model serves, drift runs, and
    # /monitor says what is wrong beside the drift report.
    fairness = {"sensitive": ["zz"], "prediction_output": "label", "positive_label": 1}
    write_scored(root, monitoring={"drift": {"window": 40, "step": 20}, "fairness": fairness})
    write_scored(root, "plain")
    assert "400 rows, 6 features" in _build_reference(root, tmp_path)

    log_path = tmp_path / "requests.db"
    server = start_server(
        root, "--no-grpc", "--log-level", "WARNING", "--request-log", str(log_path)
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        answer = _infer(server, rng.normal(size=(2, 3)).astype(np.float32))
        assert {o["name"] for o in answer["outputs"]} == {"probabilities", "label"}
    report = _wait_rows(server, 40)
    assert report["enabled"] and not report["alarm"]
    assert report["sinks"] == ["request_log", "drift"] and report["disabled"] == {}
    assert report["dropped_records"] == 0
    assert len(report["errors"]) == 1 and "sensitive column(s) ['zz']" in report["errors"][0]
    assert report["reference"]["rows"] == 400 and report["window"]["size"] == 40
    assert {f["feature"] for f in report["features"]} >= {"a", "b", "c"}
    shifted = rng.normal(size=(40, 3)).astype(np.float32)
    shifted[:, 0] += 3.0
    for start in range(0, 40, 4):
        _infer(server, shifted[start : start + 4])
    report = _wait_rows(server, 80, "/v2/models/scored/versions/1/monitor")
    assert report["alarm"] and "a" in [f["feature"] for f in report["features"] if f["drift"]]
    assert [h["end"] for h in report["history"]] == [40, 60, 80]
    # The alarm turning on is in the request log.
    status, logged = _get(server, "/v2/models/scored/log?kind=events")
    assert status == 200 and [e["kind"] for e in logged["rows"]] == ["drift_alarm"]
    assert "a" in logged["rows"][0]["detail"]["features"]
    status, logged = _get(server, "/v2/models/scored/log?kind=all&limit=1000")
    assert len(logged["rows"]) == 31  # 30 requests and the event
    status, error = _get(server, "/v2/models/scored/log?kind=alarms")
    assert status == 400 and "kind must be one of" in error["error"]
    _, metrics = _get(server, "/metrics")
    assert 'forwardpass_drift_alarm{model="scored",version="1"} 1.0' in metrics
    assert 'forwardpass_drift_score{feature="a",model="scored",test="ks",version="1"}' in metrics

    status, error = _get(server, "/v2/models/plain/monitor")
    assert status == 400 and "has no drift monitoring configured" in error["error"]
    status, error = _get(server, "/v2/models/absent/monitor")
    assert status == 404
    assert server.stop() == 0

    again = start_server(root, "--no-grpc", "--log-level", "WARNING")  # no request log now
    status, report = _get(again, "/v2/models/scored/monitor")
    assert status == 200 and report["window"]["rows_seen"] == 80 and report["alarm"]
    assert [h["end"] for h in report["history"]] == [40, 60, 80]


def test_drift_and_the_request_log_with_two_workers(start_server: Any, tmp_path: Path) -> None:
    """``serve --workers 2``: each worker monitors the requests it serves (its own window and
    state file, and /monitor says so); both write the one request log."""
    root = tmp_path / "models"
    write_scored(root, monitoring={"drift": {"window": 20, "step": 10}})
    _build_reference(root, tmp_path)
    log_path = tmp_path / "requests.db"
    server = start_server(
        root, "--no-grpc", "--workers", "2", "--log-level", "WARNING",
        "--request-log", str(log_path),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    ids = {_infer(server, rng.normal(size=(2, 3)).astype(np.float32))["id"] for _ in range(60)}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, logged = _get(server, "/v2/models/scored/log?limit=1000")
        if status == 200 and {r["id"] for r in logged["rows"]} >= ids:
            break
        time.sleep(0.1)
    assert {r["id"] for r in logged["rows"]} >= ids  # both workers' rows, whoever answers
    seen: dict[int, int] = {}
    for _ in range(20):  # fresh connections reach both workers
        status, report = _get(server, "/v2/models/scored/monitor")
        assert status == 200 and "each worker monitors the requests it serves" in report["scope"]
        seen[report["worker"]] = report["observed_requests"]
    assert server.stop() == 0
    state = root / "scored" / "monitor" / "state"
    assert sorted(p.name for p in state.iterdir()) == ["worker-0", "worker-1"]
    observed = [
        json.loads((state / f"worker-{w}" / "drift-v1.json").read_text())["observed"]
        for w in (0, 1)
    ]
    assert sum(observed) == 60 and all(observed)
    assert all(seen[w] <= observed[w] for w in seen)
