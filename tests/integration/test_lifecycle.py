"""Process lifecycle: time to ready on the embedded repository, the digits model through
tritonclient, and a graceful shutdown that lets in-flight requests finish."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from modelrepo import null_config, write_model
from rawhttp import RawResponse, raw_request
from sklearn.datasets import load_digits


def test_embedded_repository_ready_quickly_and_classifies_digits(start_server: Any) -> None:
    began = time.perf_counter()
    server = start_server(None)  # no --model-repository: the embedded one
    elapsed = time.perf_counter() - began
    print(f"forwardpass serve (embedded repository): 'listening' after {elapsed:.2f}s")
    assert elapsed < 10

    digits = load_digits()
    n = 20
    images = (digits.images[:n] / 16.0).astype(np.float32).reshape(n, 1, 8, 8)
    client = httpclient.InferenceServerClient(server.address)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        assert [row["name"] for row in client.get_model_repository_index()] == ["digits"]
        inp = httpclient.InferInput("image", [n, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(images, binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=True),
        ]
        probabilities = client.infer("digits", [inp], outputs=outputs).as_numpy("probabilities")
        assert probabilities is not None and probabilities.shape == (n, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
        predicted = probabilities.argmax(axis=1)
        assert (predicted == digits.target[:n]).sum() >= n - 1

        top = httpclient.InferRequestedOutput("probabilities", class_count=1)
        classes = client.infer("digits", [inp], outputs=[top]).as_numpy("probabilities")
        assert classes is not None and classes.shape == (n, 1)
        for i, (row, index) in enumerate(zip(classes, predicted, strict=True)):
            value, got_index, label = row[0].decode().split(":")
            assert int(got_index) == index and label == str(index)
            assert float(value) == pytest.approx(float(probabilities[i, index]), abs=1e-5)
    finally:
        client.close()
    assert server.stop() == 0


def test_sigint_lets_in_flight_requests_finish(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "slow", config=null_config("slow", dims="[ -1 ]", delay_ms=700))
    server = start_server(root)
    answers: list[RawResponse] = []

    def send(value: float) -> None:
        body = {"inputs": [{"name": "in", "datatype": "FP32", "shape": [2], "data": [value, 0]}]}
        answers.append(raw_request(server.address, "POST", "/v2/models/slow/infer", body))

    # One request running and one queued behind it when the signal arrives.
    threads = [threading.Thread(target=send, args=(v,)) for v in (1.0, 2.0)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGINT)
    for thread in threads:
        thread.join(30)
    assert server.proc.wait(30) == 0
    assert sorted(a.status for a in answers) == [200, 200], [a.body for a in answers]
    assert sorted(a.json()["outputs"][0]["data"][0] for a in answers) == [1.0, 2.0]
    log = "".join(server.log)
    assert "shutting down" in log
    assert "stopped" in log
    # The port is closed once the process has gone.
    with pytest.raises(OSError):
        raw_request(server.address, "GET", "/v2/health/live", timeout=2)


def test_second_sigint_exits_at_once(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "stuck", config=null_config("stuck", dims="[ -1 ]", delay_ms=20_000))
    server = start_server(root)
    body = {"inputs": [{"name": "in", "datatype": "FP32", "shape": [1], "data": [1]}]}
    thread = threading.Thread(
        target=_ignore_errors,
        args=(raw_request, server.address, "POST", "/v2/models/stuck/infer", body),
        daemon=True,
    )
    thread.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert server.proc.poll() is None  # the first signal waits for the running batch
    began = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(10) == 1
    assert time.monotonic() - began < 3  # not the 20 s the batch would take
    assert "second signal" in "".join(server.log)
    thread.join(5)


def _ignore_errors(function: Any, *args: Any) -> None:
    try:
        function(*args)
    except OSError:
        pass  # the server went away mid-request, which is the point
