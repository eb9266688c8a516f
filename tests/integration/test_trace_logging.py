"""The trace and logging extensions on a real server, driven by ``tritonclient.http``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ORDER = [
    "HTTP_RECV_END",
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
    "HTTP_SEND_START",
]


def infer(client: httpclient.InferenceServerClient, n: int, request_id: str = "") -> None:
    x = np.ones((1, 4), np.float32)
    for i in range(n):
        tensor = httpclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("mlp", [tensor], request_id=f"{request_id}{i}" if request_id else "")


def wait_for(path: Path, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]
            except orjson.JSONDecodeError:
                pass  # caught between the writer's seek and write
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def test_trace_and_logging_with_tritonclient(
    start_server: Any, main_repository: Path, tmp_path: Path
) -> None:
    trace_file = tmp_path / "trace.json"
    log_file = tmp_path / "server.log"
    server = start_server(
        main_repository,
        "--trace-config",
        f"triton,file={trace_file}",
        "--trace-config",
        "rate=1",
        "--trace-config",
        "level=OFF",
        "--log-file",
        str(log_file),
    )
    client = httpclient.InferenceServerClient(server.address)
    try:
        assert {"trace", "logging"} <= set(client.get_server_metadata()["extensions"])
        initial = {
            "trace_file": str(trace_file),
            "trace_level": ["OFF"],
            "trace_rate": "1",
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_mode": "triton",
        }
        assert client.get_trace_settings() == initial
        assert client.get_trace_settings(model_name="mlp") == initial
        infer(client, 2)  # OFF: nothing traced

        updated = client.update_trace_settings(
            settings={"trace_level": ["TIMESTAMPS"], "trace_count": "3"}
        )
        assert updated == {**initial, "trace_level": ["TIMESTAMPS"], "trace_count": "3"}
        infer(client, 5, request_id="req")
        assert client.get_trace_settings()["trace_count"] == "0"  # ran out after three

        records = wait_for(trace_file)
        headers = [r for r in records if "model_name" in r]
        assert [h["request_id"] for h in headers] == ["req0", "req1", "req2"]
        for header in headers:
            assert header["model_name"] == "mlp" and header["model_version"] == 1
            stamps = [
                r["timestamps"][0] for r in records if r["id"] == header["id"] and "timestamps" in r
            ]
            assert [s["name"] for s in stamps] == ORDER
            ns = [s["ns"] for s in stamps]
            assert ns == sorted(ns)

        # Per-model override and clear, as tritonclient sends them.
        model = client.update_trace_settings(
            model_name="mlp", settings={"trace_count": "-1", "trace_rate": "2"}
        )
        assert model["trace_count"] == "-1" and model["trace_rate"] == "2"
        assert client.get_trace_settings()["trace_count"] == "0"
        cleared = client.update_trace_settings(
            model_name="mlp", settings={"trace_count": None, "trace_rate": None}
        )
        assert cleared == client.get_trace_settings()
        with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
            client.get_trace_settings(model_name="nope")
        with pytest.raises(InferenceServerException, match="can not be updated through network"):
            client.update_trace_settings(settings={"trace_file": str(tmp_path / "other.json")})

        # Logging: the switches take effect at once, in the log file.
        assert client.get_log_settings() == {
            "log_file": str(log_file),
            "log_info": True,
            "log_warning": True,
            "log_error": True,
            "log_verbose_level": 0,
            "log_format": "default",
        }
        after = client.update_log_settings({"log_info": False, "log_format": "ISO8601"})
        assert after["log_info"] is False and after["log_format"] == "ISO8601"
        client.update_trace_settings(settings={"trace_rate": "5"})  # logged at INFO: hidden
        client.update_log_settings({"log_info": True})
        client.update_trace_settings(settings={"trace_rate": "6"})  # shown
        with pytest.raises(InferenceServerException, match="invalid argument for --log_format"):
            client.update_log_settings({"log_format": "json"})
    finally:
        client.close()
    assert server.stop() == 0
    text = log_file.read_text()
    assert "rate=6" in text and "rate=5" not in text
    assert "forwardpass ready" in text
