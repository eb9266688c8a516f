"""A real server driven by the official ``tritonclient.http``: what users actually do."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from modelrepo import DATATYPES, MLP_LABELS, mlp_expected
from tritonclient.utils import InferenceServerException

# -- health, metadata, config -------------------------------------------------------------------


def test_health(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "forwardpass"
    assert metadata["version"]
    assert {
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "model_repository",
        "schedule_policy",
        "statistics",
    } <= set(metadata["extensions"])


def test_model_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("mlp")
    assert metadata["name"] == "mlp"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    config = client.get_model_config("mlp")
    assert config["name"] == "mlp"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["name"] == "x"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [4]
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000


def test_autocompleted_metadata(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("alltypes")
    inputs = {t["name"]: t for t in metadata["inputs"]}
    for datatype in DATATYPES:
        assert inputs[f"IN_{datatype}"] == {
            "name": f"IN_{datatype}",
            "datatype": datatype,
            "shape": [-1, 3],
        }
    # A model whose variable axis is not the first one is served without batching.
    metadata = client.get_model_metadata("batch_second")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [3, -1]}]
    assert client.get_model_config("batch_second")["max_batch_size"] == 0
    assert client.get_model_metadata("scalar")["inputs"][0]["shape"] == []


def test_versions(client: httpclient.InferenceServerClient) -> None:
    assert client.get_model_metadata("versioned")["versions"] == ["1", "2"]
    assert client.get_model_metadata("versioned", "1")["name"] == "versioned"
    assert client.is_model_ready("versioned")
    assert client.is_model_ready("versioned", "1")
    assert client.is_model_ready("versioned", "2")
    assert not client.is_model_ready("versioned", "3")
    assert client.get_model_config("versioned", "2")["max_batch_size"] == 4
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("versioned", "3")
    assert info.value.status() == "404"
    assert "version 3" in info.value.message()
    x = np.array([[1.0, 2.0]], np.float32)
    for version, expected in (("1", x + 1), ("2", x + 2), ("", x + 2)):
        inp = httpclient.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("versioned", [inp], model_version=version)
        np.testing.assert_array_equal(result.as_numpy("y"), expected)
        assert result.get_response()["model_version"] == (version or "2")


def test_unknown_model(client: httpclient.InferenceServerClient) -> None:
    assert not client.is_model_ready("no_such_model")
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as info:
            call("no_such_model")
        assert info.value.status() == "404"
        assert "no_such_model" in info.value.message()


def test_repository_index(client: httpclient.InferenceServerClient, raw: Any) -> None:
    index = client.get_model_repository_index()
    rows = {(row["name"], row.get("version", "")): row for row in index}
    assert rows["mlp", "1"]["state"] == "READY"
    assert rows["versioned", "1"]["state"] == rows["versioned", "2"]["state"] == "READY"
    # Broken models are listed UNAVAILABLE with the reason, and the others still serve.
    assert rows["broken_onnx", ""]["state"] == "UNAVAILABLE"
    assert "ONNX" in rows["broken_onnx", ""]["reason"]
    assert rows["broken_config", ""]["state"] == "UNAVAILABLE"
    assert "config.pbtxt" in rows["broken_config", ""]["reason"]
    assert not client.is_model_ready("broken_onnx")
    assert not client.is_model_ready("broken_config")
    ready_only = raw("POST", "/v2/repository/index", {"ready": True})
    assert ready_only.status == 200
    names = {row["name"] for row in ready_only.json()}
    assert "mlp" in names and not names & {"broken_onnx", "broken_config"}
    assert all(row["state"] == "READY" for row in ready_only.json())
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("broken_onnx")
    assert info.value.status() == "503"
    assert "ONNX" in info.value.message()


# -- inference ----------------------------------------------------------------------------------


def _alltypes_data() -> dict[str, np.ndarray]:
    data: dict[str, np.ndarray] = {}
    for datatype, (_, dtype) in DATATYPES.items():
        if datatype == "BOOL":
            array = np.array([[True, False, True], [False, False, True]])
        elif datatype == "BYTES":
            array = np.array([[b"a", b"", "h\u00e9llo".encode()], [b"x y", b"\xe2\x82\xac", b"z"]])
            array = array.astype(np.object_)
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            array = np.array([[info.min, 0, info.max], [1, info.max - 1, 7]], dtype)
        else:
            array = np.array([[0.5, -1.25, np.inf], [np.nan, -np.inf, 3.0]], dtype)
        data[datatype] = array
    return data


@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
def test_every_datatype(
    client: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    data = _alltypes_data()
    inputs = []
    for datatype, array in data.items():
        inp = httpclient.InferInput(f"IN_{datatype}", list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary_in)
        inputs.append(inp)
    names = [f"OUT_{t}" for t in DATATYPES] + ["OUT_CAST"]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in names]
    result = client.infer("alltypes", inputs, outputs=outputs)
    response = result.get_response()
    for output in response["outputs"]:
        assert ("data" in output) is not binary_out, output["name"]
    for datatype, array in data.items():
        got = result.as_numpy(f"OUT_{datatype}")
        assert got is not None, datatype
        assert got.shape == array.shape, datatype
        if datatype == "BYTES":
            # tritonclient gives bytes for binary outputs and str for JSON ones.
            text = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in got]
            assert text == [[x.decode() for x in row] for row in array]
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)
    cast = result.as_numpy("OUT_CAST")
    assert cast is not None and cast.dtype == np.float64
    np.testing.assert_array_equal(cast, data["INT32"].astype(np.float64))


def test_mlp_matches_numpy(client: httpclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    for binary in (True, False):
        inp = httpclient.InferInput("x", [5, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("mlp", [inp])
        np.testing.assert_allclose(result.as_numpy("y"), mlp_expected(x), rtol=1e-6, atol=1e-6)


def test_request_id_echoed(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    result = client.infer("mlp", [inp], request_id="req-42/\u00e9")
    assert result.get_response()["id"] == "req-42/\u00e9"
    assert "id" not in client.infer("mlp", [inp]).get_response()


@pytest.mark.parametrize("binary", [True, False])
def test_classification(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    expected = mlp_expected(x)  # rows [0.6, -1.2->0, 0.55] and [-0.15->0, 1.8, 1.3]
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("y", binary_data=binary, class_count=2)
    result = client.infer("mlp", [inp], outputs=[out])
    classes = result.as_numpy("y")
    assert classes is not None and classes.shape == (2, 2)
    for row, scores in zip(classes, expected, strict=True):
        top = np.argsort(-scores, kind="stable")[:2]
        for entry, index in zip(row, top, strict=True):
            text = entry.decode() if isinstance(entry, bytes) else entry
            value, got_index, label = text.split(":")
            assert int(got_index) == index
            assert label == MLP_LABELS[index]
            assert float(value) == pytest.approx(float(scores[index]), abs=1e-5)


def test_scalar_and_batch_second_models(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [], "FP32")
    inp.set_data_from_numpy(np.array(2.5, np.float32))
    result = client.infer("scalar", [inp])
    y = result.as_numpy("y")
    assert y is not None and y.shape == () and float(y) == 3.5

    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    inp = httpclient.InferInput("x", [3, 5], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    np.testing.assert_array_equal(client.infer("batch_second", [inp]).as_numpy("y"), x + 1)


def _parse_binary_response(body: bytes, header_length: int) -> tuple[dict[str, Any], bytes]:
    return json.loads(body[:header_length]), body[header_length:]


def test_raw_binary_request(raw: Any) -> None:
    # Inference-Header-Content-Length: 0 → the body is the raw bytes of the only input.
    x = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    response = raw(
        "POST",
        "/v2/models/mlp/infer",
        x.tobytes(),
        {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert response.status == 200, response.body
    header, blob = _parse_binary_response(
        response.body, int(response.headers["inference-header-content-length"])
    )
    (output,) = header["outputs"]
    assert output["shape"] == [1, 3]
    assert output["parameters"]["binary_data_size"] == len(blob) == 12
    np.testing.assert_allclose(np.frombuffer(blob, np.float32), mlp_expected(x[None])[0], rtol=1e-6)

    response = raw(
        "POST",
        "/v2/models/scalar/infer",
        struct.pack("<f", 41.0),
        {"Inference-Header-Content-Length": "0"},
    )
    assert response.status == 200, response.body
    header, blob = _parse_binary_response(
        response.body, int(response.headers["inference-header-content-length"])
    )
    assert header["outputs"][0]["shape"] == []
    assert struct.unpack("<f", blob) == (42.0,)


def test_percent_encoded_model_name(raw: Any) -> None:
    response = raw("GET", "/v2/models/%6Dlp")  # "mlp", as a client that quotes names sends it
    assert response.status == 200, response.body
    assert response.json()["name"] == "mlp"


# -- concurrency, batching, statistics ----------------------------------------------------------


def _model_stats(client: httpclient.InferenceServerClient, name: str, version: str = "") -> Any:
    stats = client.get_inference_statistics(name, version)["model_stats"]
    assert len(stats) == 1
    return stats[0]


def test_concurrent_requests_are_batched(client: httpclient.InferenceServerClient) -> None:
    before = _model_stats(client, "mlp")
    n = 16
    xs = [np.full((1, 4), i, np.float32) + np.arange(4, dtype=np.float32) for i in range(n)]
    pending = []
    for i, x in enumerate(xs):
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=i % 2 == 0)
        pending.append(client.async_infer("mlp", [inp], request_id=str(i)))
    for i, (x, request) in enumerate(zip(xs, pending, strict=True)):
        result = request.get_result(timeout=30)
        assert result.get_response()["id"] == str(i)
        np.testing.assert_allclose(result.as_numpy("y"), mlp_expected(x), rtol=1e-6, atol=1e-6)
    after = _model_stats(client, "mlp")
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    print(f"mlp: {inferences} inferences in {executions} executions")
    assert inferences == n
    assert 1 <= executions < n
    assert any(b["batch_size"] > 1 for b in after["batch_stats"])


def test_statistics_count_requests(client: httpclient.InferenceServerClient) -> None:
    before = _model_stats(client, "versioned", "1")
    other_before = _model_stats(client, "versioned", "2")
    inp = httpclient.InferInput("x", [2, 2], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 2), np.float32))
    for _ in range(3):
        client.infer("versioned", [inp], model_version="1")
    bad = httpclient.InferInput("x", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("versioned", [bad], model_version="1")
    after = _model_stats(client, "versioned", "1")
    assert (after["name"], after["version"]) == ("versioned", "1")
    assert after["inference_count"] - before["inference_count"] == 6  # 3 requests of 2 rows
    assert after["execution_count"] - before["execution_count"] == 3
    success, fail = after["inference_stats"]["success"], after["inference_stats"]["fail"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 3
    assert fail["count"] - before["inference_stats"]["fail"]["count"] == 1
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] > 0
    # The other version saw none of it.
    assert _model_stats(client, "versioned", "2") == other_before
    everything = client.get_inference_statistics()["model_stats"]
    assert {("versioned", "1"), ("versioned", "2"), ("mlp", "1")} <= {
        (s["name"], s["version"]) for s in everything
    }


@pytest.mark.parametrize("binary", [True, False])
def test_text_model_round_trips_utf8(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    words = np.array([["hello", "w\u00f6rld", ""], ["\u65e5\u672c", "a b", "\u20ac"]], np.object_)
    inp = httpclient.InferInput("text", [2, 3], "BYTES")
    inp.set_data_from_numpy(words, binary_data=binary)
    out = httpclient.InferRequestedOutput("same", binary_data=binary)
    same = client.infer("text", [inp], outputs=[out]).as_numpy("same")
    assert same is not None and same.shape == (2, 3)
    text = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in same]
    assert text == words.tolist()


def test_compressed_request(client: httpclient.InferenceServerClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "mlp",
            [inp],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("y"), mlp_expected(x), rtol=1e-6)
