"""Restricted API groups and the inference key on a real server, through raw HTTP and
tritonclient: refused without the header or key, served with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from modelrepo import null_config, write_model
from rawhttp import raw_request
from tritonclient.utils import InferenceServerException

ADMIN = {"admin-key": "s3cret"}
BEARER = {"Authorization": "Bearer k3y"}
INFER = {"inputs": [{"name": "in", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}


@pytest.fixture(scope="module")
def guarded(start_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("access") / "models"
    write_model(root, "echo", config=null_config("echo", max_batch_size=4))
    return start_module_server(
        root,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--http-restricted-api",
        "model-repository,model-config,statistics:admin-key=s3cret",
        "--api-key",
        "k3y",
        "--log-level",
        "WARNING",
    )


def test_restricted_groups_refuse_without_the_header(guarded: Any) -> None:
    for method, path, body in [
        ("POST", "/v2/repository/index", {}),
        ("POST", "/v2/repository/models/echo/unload", {}),
        ("GET", "/v2/models/echo/config", None),
        ("GET", "/v2/models/stats", None),
    ]:
        refused = raw_request(guarded.address, method, path, body)
        assert refused.status == 403, (path, refused.body)
        assert refused.error == "This API is restricted, expecting header 'admin-key'"
        wrong = raw_request(guarded.address, method, path, body, {"admin-key": "guess"})
        assert wrong.status == 403
    index = raw_request(guarded.address, "POST", "/v2/repository/index", {}, ADMIN)
    assert index.status == 200 and [row["name"] for row in index.json()] == ["echo"]
    assert raw_request(guarded.address, "GET", "/v2/models/echo/config", None, ADMIN).status == 200
    # Health and metadata are not restricted.
    assert raw_request(guarded.address, "GET", "/v2/health/ready").status == 200
    assert raw_request(guarded.address, "GET", "/v2/models/echo").status == 200


def test_inference_needs_the_key(guarded: Any) -> None:
    path = "/v2/models/echo/infer"
    missing = raw_request(guarded.address, "POST", path, INFER)
    assert missing.status == 401 and "API key" in missing.error
    assert missing.headers.get("www-authenticate", "").startswith("Bearer")
    wrong = raw_request(guarded.address, "POST", path, INFER, {"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.error == "invalid API key"
    ok = raw_request(guarded.address, "POST", path, INFER, BEARER)
    assert ok.status == 200 and ok.json()["outputs"][0]["data"] == [1.0, 2.0]


def test_tritonclient_with_headers(guarded: Any) -> None:
    client = httpclient.InferenceServerClient(guarded.address)
    try:
        inp = httpclient.InferInput("in", [1, 2], "FP32")
        inp.set_data_from_numpy(np.array([[3, 4]], np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("echo", [inp])
        assert str(info.value.status()) == "401"
        result = client.infer("echo", [inp], headers=BEARER)
        np.testing.assert_array_equal(result.as_numpy("out"), [[3, 4]])
        with pytest.raises(InferenceServerException, match="expecting header 'admin-key'"):
            client.get_model_repository_index()
        assert client.get_model_repository_index(headers=ADMIN)[0]["name"] == "echo"
    finally:
        client.close()
