"""``forwardpass serve --workers 2`` on loopback: two processes that answer as one server.

Each request goes out on a fresh connection, so the kernel (SO_REUSEPORT) spreads them over
the workers; the per-worker counters in /metrics show that both served.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from modelrepo import add_onnx, null_config, write_model
from rawhttp import RawResponse, raw_request

ADDER_CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
WORKER_UP = re.compile(r'forwardpass_worker_up\{pid="(\d+)",worker="(\d+)"\} 1\.0')
WORKER_SERVED = re.compile(
    r'forwardpass_worker_request_success_total\{pid="(\d+)",worker="(\d+)"\} ([\d.]+)'
)


def _echo(address: str, model: str = "echo") -> RawResponse:
    body = {"inputs": [{"name": "in", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    return raw_request(address, "POST", f"/v2/models/{model}/infer", body)


def _add(address: str) -> RawResponse:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    return raw_request(address, "POST", "/v2/models/adder/infer", body)


def _metrics(address: str) -> str:
    response = raw_request(address, "GET", "/metrics")
    assert response.status == 200
    return response.body.decode()


def _workers(address: str) -> dict[int, int]:
    """worker index → pid, as /metrics reports them."""
    return {int(w): int(pid) for pid, w in WORKER_UP.findall(_metrics(address))}


def _served(text: str) -> dict[int, float]:
    return {int(w): float(n) for _, w, n in WORKER_SERVED.findall(text)}


def _success(text: str, model: str) -> float:
    match = re.search(
        rf'forwardpass_request_success_total\{{model="{model}",version="1"\}} ([\d.]+)', text
    )
    return float(match.group(1)) if match else 0.0


def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def _repository(root: Path) -> Path:
    write_model(root, "echo", config=null_config("echo"))
    write_model(root, "slow", config=null_config("slow", delay_ms=700))
    write_model(root, "adder", config=ADDER_CONFIG, versions={1: add_onnx(1.0, [-1, 2])})
    write_model(root, "broken", config=ADDER_CONFIG)  # no model file: every load fails
    return root


@pytest.fixture(scope="module")
def cluster(start_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = _repository(tmp_path_factory.mktemp("workers") / "models")
    return start_module_server(
        root,
        "--workers",
        "2",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "echo",
        "--load-model",
        "slow",
    )


def test_both_workers_serve_and_metrics_and_statistics_sum_them(cluster: Any) -> None:
    before = _metrics(cluster.address)
    stats_before = raw_request(cluster.address, "GET", "/v2/models/echo/stats").json()
    count_before = stats_before["model_stats"][0]["inference_count"]
    sent = 40
    for _ in range(sent):
        assert _echo(cluster.address).status == 200
    after = _metrics(cluster.address)
    assert len(_workers(cluster.address)) == 2
    served = _served(after)
    old = _served(before)
    assert set(served) == {0, 1}
    assert all(served[w] > old.get(w, 0) for w in (0, 1)), (old, served)  # both took some
    assert _success(after, "echo") - _success(before, "echo") == sent
    assert sum(served.values()) == _success(after, "echo") + _success(after, "slow")
    # Histograms are summed bucket by bucket: the count is every request's.
    count = re.search(
        r'forwardpass_request_duration_seconds_count\{model="echo",version="1"\} ([\d.]+)', after
    )
    assert count and float(count.group(1)) == _success(after, "echo")

    stats = raw_request(cluster.address, "GET", "/v2/models/echo/stats").json()
    (echo,) = stats["model_stats"]
    assert echo["inference_count"] - count_before == sent
    assert echo["inference_stats"]["success"]["count"] == _success(after, "echo")
    every = raw_request(cluster.address, "GET", "/v2/models/stats").json()
    assert {s["name"] for s in every["model_stats"]} == {"echo", "slow"}

    # gRPC's statistics are the same sums (its port is shared too).
    with grpcclient.InferenceServerClient(cluster.grpc_address) as client:
        (grpc_echo,) = client.get_inference_statistics("echo").model_stats
    assert grpc_echo.inference_count == echo["inference_count"]


def test_load_and_unload_apply_to_every_worker(cluster: Any) -> None:
    assert _add(cluster.address).status == 404
    load = raw_request(cluster.address, "POST", "/v2/repository/models/adder/load", {})
    assert load.status == 200, load.body
    for _ in range(20):  # on fresh connections: both workers answer
        response = _add(cluster.address)
        assert response.status == 200, response.body
        assert response.json()["outputs"][0]["data"] == [2.0, 3.0]
    with grpcclient.InferenceServerClient(cluster.grpc_address) as client:
        assert client.is_model_ready("adder")

    unload = raw_request(cluster.address, "POST", "/v2/repository/models/adder/unload", {})
    assert unload.status == 200, unload.body
    for _ in range(20):
        response = _add(cluster.address)
        assert response.status == 503, response.body


def test_a_load_that_fails_leaves_no_worker_with_the_model(cluster: Any) -> None:
    load = raw_request(cluster.address, "POST", "/v2/repository/models/broken/load", {})
    assert load.status == 400
    assert "no version folder" in load.error
    for _ in range(10):
        assert raw_request(cluster.address, "GET", "/v2/models/broken/ready").status != 200


def test_log_and_trace_settings_apply_to_every_worker(cluster: Any) -> None:
    update = raw_request(cluster.address, "POST", "/v2/logging", {"log_verbose_level": 2})
    assert update.status == 200 and update.json()["log_verbose_level"] == 2
    trace = raw_request(cluster.address, "POST", "/v2/trace/setting", {"trace_rate": "7"})
    assert trace.status == 200 and trace.json()["trace_rate"] == "7"
    for _ in range(16):
        assert raw_request(cluster.address, "GET", "/v2/logging").json()["log_verbose_level"] == 2
        assert raw_request(cluster.address, "GET", "/v2/trace/setting").json()["trace_rate"] == "7"
    raw_request(cluster.address, "POST", "/v2/logging", {"log_verbose_level": 0})
    raw_request(cluster.address, "POST", "/v2/trace/setting", {"trace_rate": "1000"})


def test_a_killed_worker_comes_back_with_the_same_models(start_server: Any, tmp_path: Path) -> None:
    root = _repository(tmp_path / "models")
    server = start_server(
        root, "--workers", "2", "--model-control-mode", "explicit", "--load-model", "echo"
    )
    assert raw_request(server.address, "POST", "/v2/repository/models/adder/load", {}).status == 200
    pids = _workers(server.address)
    assert len(pids) == 2
    victim = pids[1]
    # Load on fresh connections throughout the kill: a request may die with its worker's
    # connection, but none gets an error answer.
    statuses: list[int] = []
    dropped: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                statuses.append(_echo(server.address).status)
            except (ConnectionError, http.client.HTTPException) as exc:
                dropped.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(0.3)
    os.kill(victim, signal.SIGKILL)
    _until(lambda: not os.path.exists(f"/proc/{victim}") or _zombie(victim), "the worker died")
    time.sleep(0.3)
    stop.set()
    loader.join(30)
    assert statuses and set(statuses) == {200}, set(statuses)
    assert len(dropped) <= 2, dropped  # at most the one in flight (and one being accepted)
    # The other worker keeps serving: every request succeeds meanwhile.
    for _ in range(20):
        assert _echo(server.address).status == 200
    _until(lambda: "worker 1 is serving again" in "".join(server.log), "the worker was back")
    now = _workers(server.address)
    assert now[0] == pids[0] and now[1] != victim
    # The new worker replayed the load made through the API before it died.
    before = _served(_metrics(server.address)).get(1, 0)
    for _ in range(30):
        response = _add(server.address)
        assert response.status == 200, response.body
    assert _served(_metrics(server.address))[1] > before
    assert "worker 1" in "".join(server.log) and "restarting" in "".join(server.log)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_sigterm_drains_every_worker(start_server: Any, tmp_path: Path) -> None:
    root = _repository(tmp_path / "models")
    server = start_server(
        root, "--workers", "2", "--model-control-mode", "explicit", "--load-model", "slow"
    )
    pids = list(_workers(server.address).values())
    answers: list[int] = []

    def call() -> None:
        answers.append(_echo(server.address, "slow").status)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # in flight on both workers (0.7 s each)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(10)
    assert answers == [200] * 6
    assert server.proc.wait(15) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be at least 1, got 0"),
        ("-2", "must be at least 1, got -2"),
        ("999", "999 workers but only"),
        ("many", "expected a number of workers or 'auto'"),
    ],
)
def test_bad_worker_counts_are_usage_errors(value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forwardpass", "serve", "--workers", value, "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr and message in result.stderr
