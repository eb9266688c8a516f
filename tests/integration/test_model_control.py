"""Model control as Triton defines it, on real servers: none refuses the repository API, poll
serves what appears in the repository (a version `forwardpass optimize` just wrote) and
drops what leaves it, explicit accepts uploads only when opted in."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelrepo import add_onnx, null_config, write_model
from rawhttp import raw_request

ADDER_CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
POLL_SECS = 0.3


def _infer(address: str, model: str) -> Any:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    return raw_request(address, "POST", f"/v2/models/{model}/infer", body)


def _until(condition: Callable[[], bool], what: str, timeout: float = 20 * POLL_SECS + 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_SECS / 3)
    raise AssertionError(f"not within {timeout:.1f}s: {what}")


def _write_version(model: Path, version: int, constant: float) -> None:
    """Atomically, as `forwardpass optimize` does: a hidden folder renamed into place."""
    staging = model / f".v{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(add_onnx(constant, ["batch", 2]))
    staging.rename(model / str(version))


def test_poll_serves_new_versions_and_drops_removed_ones(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    adder = write_model(root, "adder", config=ADDER_CONFIG, versions={1: add_onnx(1.0, [-1, 2])})
    server = start_server(
        root,
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        str(POLL_SECS),
        "--log-level",
        "WARNING",
    )
    first = _infer(server.address, "adder")
    assert first.status == 200 and first.json()["outputs"][0]["data"] == [2.0, 3.0]

    _write_version(adder, 2, 10.0)  # the default version policy serves the latest one

    def served(version: str, data: list[float]) -> Callable[[], bool]:
        def check() -> bool:
            answer = _infer(server.address, "adder")
            if answer.status != 200:
                return False
            doc = answer.json()
            return doc["model_version"] == version and doc["outputs"][0]["data"] == data

        return check

    _until(served("2", [11.0, 12.0]), "version 2 served")
    shutil.rmtree(adder / "2")
    _until(served("1", [2.0, 3.0]), "back to version 1 once version 2 is removed")

    # A new model folder is loaded; a removed one is unloaded and leaves the index.
    write_model(root, "echo", config=null_config("echo"))
    _until(
        lambda: raw_request(server.address, "GET", "/v2/models/echo/ready").status == 200,
        "new model echo ready",
    )
    shutil.rmtree(root / "echo")

    def echo_gone() -> bool:
        index = raw_request(server.address, "POST", "/v2/repository/index", {}).json()
        return "echo" not in {row["name"] for row in index}

    _until(echo_gone, "echo unloaded and gone from the index")
    assert _infer(server.address, "echo").status == 404

    # The load API is refused in poll mode, with Triton's message.
    answer = raw_request(server.address, "POST", "/v2/repository/models/adder/load", {})
    assert answer.status == 503
    assert answer.error.startswith("explicit model load / unload is not allowed if polling")


def test_none_mode_loads_everything_and_refuses_the_api(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "adder", config=ADDER_CONFIG, versions={1: add_onnx(1.0, [-1, 2])})
    write_model(root, "echo", config=null_config("echo"))
    server = start_server(root, "--log-level", "WARNING")  # Triton's default: none
    assert raw_request(server.address, "GET", "/v2/health/ready").status == 200
    for action in ("load", "unload"):
        answer = raw_request(server.address, "POST", f"/v2/repository/models/echo/{action}", {})
        assert answer.status == 503, answer.body
        assert "--model-control-mode=explicit" in answer.error
    assert raw_request(server.address, "GET", "/v2/models/echo/ready").status == 200


def test_explicit_mode_refuses_uploads_unless_opted_in(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "echo", config=null_config("echo"))
    server = start_server(root, "--model-control-mode", "explicit", "--log-level", "WARNING")
    # Nothing was asked for at start: echo waits in the index, the server is ready.
    assert raw_request(server.address, "GET", "/v2/models/echo/ready").status != 200
    assert raw_request(server.address, "GET", "/v2/health/ready").status == 200
    assert raw_request(server.address, "POST", "/v2/repository/models/echo/load", {}).status == 200
    params = {"config": json.dumps({"backend": "null"}), "file:1/x": "eA=="}
    answer = raw_request(
        server.address, "POST", "/v2/repository/models/new/load", {"parameters": params}
    )
    assert answer.status == 403 and "--allow-model-upload" in answer.error
    assert not (root / "new").exists()


def test_bad_control_flags_stop_the_server_with_a_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args, words in [
        (["--load-model", "echo"], "requires --model-control-mode=explicit"),
        (["--allow-model-upload"], "only with --model-control-mode=explicit"),
        (["--http-restricted-api", "model-repo:k=v"], "unknown API group"),
    ]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "forwardpass",
                "serve",
                "--model-repository",
                str(tmp_path),
                "--http-port",
                "0",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0 and words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_strict_readiness_waits_for_every_model(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "echo", config=null_config("echo"))
    write_model(root, "broken", config="max_batch_size: [[[\n")
    strict = start_server(root, "--log-level", "ERROR")
    assert raw_request(strict.address, "GET", "/v2/health/ready").status == 503
    assert raw_request(strict.address, "GET", "/v2/models/echo/ready").status == 200
    lenient = start_server(root, "--no-strict-readiness", "--log-level", "ERROR")
    assert raw_request(lenient.address, "GET", "/v2/health/ready").status == 200
