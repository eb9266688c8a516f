"""Python models behind a real server: tritonclient against Triton-style models, a decoupled
model streamed as server-sent events, and ``forwardpass serve module:Class``."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "runtime"))
import python_models as pm


def post(url: str, body: dict[str, Any], accept: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_triton_models_over_http_and_sse(tmp_path: Path, start_server: Any) -> None:
    root = pm.triton_examples(tmp_path / "models")
    server = start_server(root)
    client = httpclient.InferenceServerClient(server.address)
    inputs = [httpclient.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(np.arange(4, dtype=np.float32))
    inputs[1].set_data_from_numpy(np.ones(4, dtype=np.float32), binary_data=True)
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [1, 2, 3, 4])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), [-1, 0, 1, 2])

    body = {
        "inputs": [
            {"name": "IN", "datatype": "INT32", "shape": [3], "data": [7, 8, 9]},
            {"name": "DELAY", "datatype": "UINT32", "shape": [3], "data": [1, 1, 1]},
            {"name": "WAIT", "datatype": "UINT32", "shape": [1], "data": [0]},
        ]
    }
    url = f"{server.url}/v2/models/repeat_int32/infer"
    status, payload = post(url, body, accept="text/event-stream")
    assert status == 200
    events = [json.loads(line[6:]) for line in payload.decode().splitlines() if line]
    assert [e["outputs"][0]["data"] for e in events] == [[7], [8], [9]]
    status, payload = post(url, body)
    assert status == 501 and b"decoupled" in payload
    # The server still answers everything else.
    assert client.is_model_ready("add_sub")


def test_serve_a_native_class_from_the_command_line(
    tmp_path: Path, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "native_models.py").write_text(pm.NATIVE)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    server = start_server(None, "native_models:Doubler")
    client = httpclient.InferenceServerClient(server.address)
    metadata = client.get_model_metadata("doubler")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    x = httpclient.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    result = client.infer("doubler", [x])
    np.testing.assert_array_equal(result.as_numpy("y"), np.arange(6).reshape(2, 3) * 2)


def test_models_lists_python_models_without_running_them(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from forwardpass.cli.models import models

    root = tmp_path / "models"
    pm.write(root, "add_sub", pm.ADD_SUB_CONFIG, pm.ADD_SUB)
    pm.write(root, "broken", pm.ADD_SUB_CONFIG.replace('"add_sub"', '"broken"'), pm.IMPORT_FAILS)
    result = CliRunner().invoke(models, ["--model-repository", str(root), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    # Both are listed as the server will try them: the import failure shows only at load.
    for name in ("add_sub", "broken"):
        assert rows[name]["state"] == "OK"
        assert "model.py present" in rows[name]["detail"]
        assert "known only at load" in rows[name]["detail"]
