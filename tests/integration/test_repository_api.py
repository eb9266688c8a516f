"""The model-repository extension through tritonclient: index, load (with config and files),
unload, reload, refusal of paths that leave the repository, and all of it under traffic."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from modelrepo import add_onnx, null_config, write_model
from rawhttp import raw_request
from tritonclient.utils import InferenceServerException

ADDER_CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ndynamic_batching { }\n'


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo_api") / "models"
    root.mkdir()
    write_model(root, "adder", config=ADDER_CONFIG, versions={1: add_onnx(1.0, ["batch", 2])})
    write_model(root, "lazy", versions={1: add_onnx(10.0, ["batch", 2])})
    write_model(root, "echo", config=null_config("echo", max_batch_size=4))
    return root


@pytest.fixture(scope="module")
def repo_server(start_module_server: Any, repository: Path) -> Any:
    # "lazy" is in the repository but not loaded at start.
    return start_module_server(
        repository,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "adder",
        "--load-model",
        "echo",
        "--allow-model-upload",
        "--log-level",
        "WARNING",
    )


@pytest.fixture
def client(repo_server: Any) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(repo_server.address)
    try:
        yield triton
    finally:
        triton.close()


def _add(client: httpclient.InferenceServerClient, model: str, x: np.ndarray) -> Any:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp])


def _index(client: httpclient.InferenceServerClient) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in client.get_model_repository_index()}


def _status(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return str(info.value.status()), info.value.message()


def test_load_and_unload(client: httpclient.InferenceServerClient) -> None:
    x = np.array([[1.0, 2.0]], np.float32)
    index = _index(client)
    assert index["lazy"].get("state", "") in ("", "UNAVAILABLE")  # present, never loaded
    assert index["adder"]["state"] == "READY"
    assert not client.is_model_ready("lazy")

    client.load_model("lazy")
    assert client.is_model_ready("lazy")
    np.testing.assert_array_equal(_add(client, "lazy", x).as_numpy("y"), x + 10)
    assert _index(client)["lazy"]["state"] == "READY"

    client.unload_model("lazy")
    assert not client.is_model_ready("lazy")
    row = _index(client)["lazy"]
    assert row["state"] == "UNAVAILABLE" and row["reason"] == "unloaded"
    status, message = _status(_add, client, "lazy", x)
    assert status == "503" and "lazy" in message and "not ready" in message
    assert client.get_model_repository_index()  # still answering

    client.load_model("lazy")  # and back again
    np.testing.assert_array_equal(_add(client, "lazy", x).as_numpy("y"), x + 10)


def test_unknown_model(client: httpclient.InferenceServerClient) -> None:
    status, message = _status(client.load_model, "not_in_repository")
    assert status == "404" and "not_in_repository" in message
    status, message = _status(client.unload_model, "not_in_repository")
    assert status == "404" and "not_in_repository" in message


def test_load_with_config_override(client: httpclient.InferenceServerClient) -> None:
    config = json.dumps({"platform": "onnxruntime_onnx", "max_batch_size": 2})
    client.load_model("lazy", config=config)
    assert client.get_model_config("lazy")["max_batch_size"] == 2
    status, message = _status(_add, client, "lazy", np.zeros((3, 2), np.float32))
    assert status == "400" and "batch size 3" in message
    client.load_model("lazy")  # without an override the config comes from the folder again
    assert client.get_model_config("lazy")["max_batch_size"] != 2


def test_load_with_files(client: httpclient.InferenceServerClient, repository: Path) -> None:
    config = json.dumps({"platform": "onnxruntime_onnx", "max_batch_size": 4})
    files = {"file:1/model.onnx": add_onnx(5.0, ["batch", 2])}
    client.load_model("uploaded", config=config, files=files)
    x = np.array([[1.0, -1.0]], np.float32)
    np.testing.assert_array_equal(_add(client, "uploaded", x).as_numpy("y"), x + 5)
    assert (repository / "uploaded" / "1" / "model.onnx").read_bytes() == files["file:1/model.onnx"]
    assert _index(client)["uploaded"]["state"] == "READY"


def test_failed_reload_keeps_serving(client: httpclient.InferenceServerClient) -> None:
    x = np.array([[1.0, 2.0]], np.float32)
    status, message = _status(client.load_model, "adder", config='{"max_batch_size": "lots"}')
    assert status == "400" and "max_batch_size" in message
    status, message = _status(client.load_model, "adder", config="{not json")
    assert status == "400" and "config" in message
    assert client.is_model_ready("adder")
    np.testing.assert_array_equal(_add(client, "adder", x).as_numpy("y"), x + 1)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/repository/models/%2E%2E/load",
        "/v2/repository/models/..%2F..%2Fevil/load",
        "/v2/repository/models/..%2Fx/load",
        "/v2/repository/models/%2Fetc/load",
        "/v2/repository/models/.hidden/load",
        "/v2/repository/models/a%00b/load",
        "/v2/repository/models/%2E%2E/unload",
    ],
)
def test_model_names_that_leave_the_repository(
    repo_server: Any, repository: Path, path: str
) -> None:
    response = raw_request(repo_server.address, "POST", path, "{}")
    assert response.status == 400, response.body
    assert "model name" in response.error
    assert not (repository.parent / "evil").exists()


def test_load_names_and_files_that_leave_the_repository(
    client: httpclient.InferenceServerClient, repository: Path
) -> None:
    status, message = _status(client.load_model, "..")
    assert status == "400" and "'..'" in message
    config = json.dumps({"backend": "null"})
    for key in ("file:../../evil", "file:../evil", "file:/tmp/evil", "file:1/../../evil"):
        status, message = _status(client.load_model, "newmodel", config=config, files={key: b"x"})
        assert status == "400", (key, message)
        assert key.removeprefix("file:") in message
    assert not (repository.parent / "evil").exists()
    assert not (repository / "evil").exists()
    assert not (repository / "newmodel").exists()  # nothing written when a path is refused
    assert client.is_server_ready()


# -- load, unload and reload while traffic flows ---------------------------------------------------


def test_reload_and_unload_under_traffic(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "adder", config=ADDER_CONFIG, versions={1: add_onnx(1.0, ["batch", 2])})
    write_model(root, "echo", config=null_config("echo", max_batch_size=4, delay_ms=5))
    server = start_server(
        root, "--model-control-mode", "explicit", "--load-model", "*", "--log-level", "WARNING"
    )
    stop = threading.Event()
    adder_log: list[list[tuple[int, str, float, float]]] = []
    echo_log: list[tuple[int, str]] = []
    problems: list[str] = []

    def hammer_adder(seed: int) -> None:
        seen: list[tuple[int, str, float, float]] = []
        adder_log.append(seen)
        triton = httpclient.InferenceServerClient(server.address)
        try:
            i = 0
            while not stop.is_set():
                x = np.array([[seed, i]], np.float32)
                try:
                    result = _add(triton, "adder", x)
                except InferenceServerException as exc:
                    problems.append(f"adder: {exc.status()} {exc.message()}")
                    continue
                y = result.as_numpy("y")
                assert y is not None
                version = result.get_response()["model_version"]
                seen.append((200, version, float(y[0, 1] - x[0, 1]), float(y[0, 0] - x[0, 0])))
                i += 1
        finally:
            triton.close()

    def hammer_echo() -> None:
        while not stop.is_set():
            body = {"inputs": [{"name": "in", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
            response = raw_request(server.address, "POST", "/v2/models/echo/infer", body)
            if response.status == 200:
                echo_log.append((200, ""))
                if response.json()["outputs"][0]["data"] != [1.0, 2.0]:
                    problems.append(f"echo: wrong answer {response.body!r}")
            else:
                echo_log.append((response.status, response.error))

    threads = [threading.Thread(target=hammer_adder, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=hammer_echo))
    for thread in threads:
        thread.start()
    control = httpclient.InferenceServerClient(server.address)
    try:
        time.sleep(0.3)
        # A new version appears in the repository; the reload switches to it (latest policy).
        (root / "adder" / "2").mkdir()
        (root / "adder" / "2" / "model.onnx").write_bytes(add_onnx(2.0, ["batch", 2]))
        control.load_model("adder")
        for _ in range(3):
            time.sleep(0.1)
            control.unload_model("echo")
            time.sleep(0.1)
            control.load_model("echo")
        time.sleep(0.3)
        assert control.get_model_metadata("adder")["versions"] == ["2"]
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        control.close()

    assert problems == []
    for seen in adder_log:
        assert seen, "a traffic thread got no answers"
        versions = [v for _, v, _, _ in seen]
        assert set(versions) <= {"1", "2"}
        # Each answer is right for the version that computed it ...
        for _, version, delta1, delta0 in seen:
            assert delta1 == delta0 == float(version)
        # ... and once a thread has seen version 2 it never sees version 1 again.
        assert versions == sorted(versions)
        assert versions[-1] == "2"
    assert any(v == "1" for seen in adder_log for _, v, _, _ in seen)
    statuses = {status for status, _ in echo_log}
    assert 200 in statuses
    assert statuses <= {200, 503}
    for status, error in echo_log:
        if status == 503:
            assert "echo" in error and ("not ready" in error or "unloading" in error), error
    print(
        f"traffic: {sum(len(s) for s in adder_log)} adder answers, {len(echo_log)} echo answers "
        f"({sum(1 for s, _ in echo_log if s == 503)} clean 503s during unload)"
    )
    assert server.stop() == 0
