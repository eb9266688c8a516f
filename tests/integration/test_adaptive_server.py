"""Adaptive batching on a real server: the config parameter (pbtxt and YAML) is accepted and
the policy serves and reports what it learned; bad values make the model UNAVAILABLE with a
precise reason while the others serve."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelrepo import null_config, write_model
from rawhttp import raw_request

ADAPTIVE = 'parameters { key: "batching" value: { string_value: "adaptive" } }\n'
BATCHED = "dynamic_batching { max_queue_delay_microseconds: 500000 }\n"

YAML = """\
name: echo_yaml
backend: "null"
max_batch_size: 8
input: [ { name: in, data_type: TYPE_FP32, dims: [ 2 ] } ]
output: [ { name: out, data_type: TYPE_FP32, dims: [ 2 ] } ]
dynamic_batching: { max_queue_delay_microseconds: 500000 }
parameters:
  batching: adaptive
  max_latency_ms: { string_value: "25" }
"""

BAD = {
    "bad_name": (
        'parameters { key: "batching" value: { string_value: "eager" } }\n',
        "parameter batching must be one of 'adaptive', 'triton', got 'eager'",
    ),
    "bad_negative": (
        ADAPTIVE + 'parameters { key: "max_latency_ms" value: { string_value: "-3" } }\n',
        "parameter max_latency_ms must be a positive finite number, got '-3'",
    ),
    "bad_text": (
        ADAPTIVE + 'parameters { key: "max_latency_ms" value: { string_value: "soon" } }\n',
        "parameter max_latency_ms must be a number of milliseconds, got 'soon'",
    ),
}


def _infer(address: str, model: str, value: float) -> Any:
    body = {"inputs": [{"name": "in", "datatype": "FP32", "shape": [1, 2], "data": [value, 1]}]}
    return raw_request(address, "POST", f"/v2/models/{model}/infer", body)


def test_adaptive_parameter_on_a_real_server(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    base = null_config("echo", max_batch_size=8, delay_ms=1)
    write_model(root, "echo", config=base + BATCHED + ADAPTIVE)
    write_model(root, "echo_yaml")
    (root / "echo_yaml" / "config.yaml").write_text(YAML)
    for name, (extra, _reason) in BAD.items():
        write_model(root, name, config=null_config(name, max_batch_size=8) + BATCHED + extra)
    server = start_server(
        root, "--model-control-mode", "explicit", "--load-model", "*", "--log-level", "ERROR"
    )

    index = raw_request(server.address, "POST", "/v2/repository/index", {}).json()
    rows = {row["name"]: row for row in index}
    for name, (_extra, reason) in BAD.items():
        assert rows[name]["state"] == "UNAVAILABLE", rows[name]
        assert reason in rows[name]["reason"], rows[name]
    assert rows["echo"]["state"] == rows["echo_yaml"]["state"] == "READY"

    # Triton's rules would hold each lone request 500 ms; adaptive sends it at once.
    for model in ("echo", "echo_yaml"):
        for i in range(5):
            answer = _infer(server.address, model, i)
            assert answer.status == 200, answer.body
            assert answer.json()["outputs"][0]["data"] == [i, 1]
    stats = raw_request(server.address, "GET", "/v2/models/echo/stats").json()
    [entry] = stats["model_stats"]
    queue_ns = entry["inference_stats"]["queue"]["ns"] / entry["inference_stats"]["queue"]["count"]
    assert queue_ns < 50e6  # far below the 500 ms delay

    with ThreadPoolExecutor(8) as pool:  # concurrent clients: answers stay right
        answers = list(pool.map(lambda i: _infer(server.address, "echo", i), range(32)))
    assert [a.json()["outputs"][0]["data"] for a in answers] == [[i, 1] for i in range(32)]

    metrics = raw_request(server.address, "GET", "/metrics").body.decode()
    rates = [
        line
        for line in metrics.splitlines()
        if line.startswith('forwardpass_adaptive_arrival_rate{model="echo"')
    ]
    assert rates and float(rates[0].split()[-1]) > 0
    assert 'forwardpass_adaptive_wait_seconds{model="echo_yaml",version="1"}' in metrics
    assert 'forwardpass_adaptive_arrival_rate{model="bad_name"' not in metrics
    # Nothing measured slower than a full batch: the cap is max_batch_size.
    caps = [
        line for line in metrics.splitlines() if line.startswith("forwardpass_adaptive_batch_cap")
    ]
    assert caps and all(float(line.split()[-1]) == 8 for line in caps), caps
