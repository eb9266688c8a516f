"""Every bad request gets the right status and a JSON ``{"error": ...}`` that names the problem,
and the server keeps serving afterwards. Raw HTTP, because tritonclient refuses to build most of
these requests; tritonclient where it can send them."""

from __future__ import annotations

import gzip
import json
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from modelrepo import mlp_expected
from rawhttp import MAX_REQUEST_BYTES, RawResponse, raw_request
from tritonclient.utils import InferenceServerException

GOOD_X = [[1.0, 2.0, 3.0, 4.0]]


def _tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _json_body(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


def _binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), len(text)


def _binary_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


_TRUNCATED, _TRUNCATED_LEN = _binary_body(
    {"inputs": [_binary_input("x", "FP32", [1, 4], 16)]}, b"\x00" * 8
)
_TRAILING, _TRAILING_LEN = _binary_body(
    {"inputs": [_binary_input("x", "FP32", [1, 4], 16)]}, b"\x00" * 20
)
_OVERRUN_BLOB = struct.pack("<I", 100) + b"abc" + struct.pack("<I", 1) + b"d"
_OVERRUN, _OVERRUN_LEN = _binary_body(
    {"inputs": [_binary_input("in", "BYTES", [2], len(_OVERRUN_BLOB))]}, _OVERRUN_BLOB
)
_GOOD_BINARY, _GOOD_BINARY_LEN = _binary_body(
    {"inputs": [_binary_input("x", "FP32", [1, 4], 16)]}, np.ones(4, np.float32).tobytes()
)
_SIZE_MISMATCH, _SIZE_MISMATCH_LEN = _binary_body(
    {"inputs": [_binary_input("x", "FP32", [1, 4], 12)]}, b"\x00" * 12
)

_NON_UTF8_BLOB = struct.pack("<I", 2) + b"\xff\xfe"
_NON_UTF8, _NON_UTF8_LEN = _binary_body(
    {"inputs": [_binary_input("text", "BYTES", [1, 1], len(_NON_UTF8_BLOB))]}, _NON_UTF8_BLOB
)

MLP = "/v2/models/mlp/infer"

# (id, path, body, headers, status, words the error must contain)
CASES: list[tuple[str, str, bytes | str | dict[str, Any], dict[str, str], int, list[str]]] = [
    ("malformed-json", MLP, '{"inputs": [', {}, 400, ["malformed JSON"]),
    ("not-an-object", MLP, "[1, 2]", {}, 400, ["JSON object"]),
    (
        "no-inputs",
        MLP,
        {"inputs": []},
        {},
        400,
        ["expected 1 inputs but got 0 inputs for model 'mlp'", "missing required input(s) ['x']"],
    ),
    (
        "missing-input",
        "/v2/models/alltypes/infer",
        _json_body(_tensor("IN_BOOL", "BOOL", [1, 3], [True, False, True])),
        {},
        400,
        ["inputs for model 'alltypes'", "missing required input(s) [", "'IN_FP32'"],
    ),
    (
        "unknown-input",
        MLP,
        _json_body(_tensor("z", "FP32", [1, 4], GOOD_X)),
        {},
        400,
        ["unexpected inference input 'z' for model 'mlp'", "'x'"],
    ),
    (
        "duplicate-input",
        MLP,
        _json_body(_tensor("x", "FP32", [1, 4], GOOD_X), _tensor("x", "FP32", [1, 4], GOOD_X)),
        {},
        400,
        ["'x'", "more than once"],
    ),
    (
        "wrong-datatype",
        MLP,
        _json_body(_tensor("x", "INT32", [1, 4], [[1, 2, 3, 4]])),
        {},
        400,
        ["inference input 'x' data-type is 'INT32', but model 'mlp' expects 'FP32'"],
    ),
    (
        "unknown-datatype",
        MLP,
        _json_body(_tensor("x", "FP33", [1, 4], GOOD_X)),
        {},
        400,
        ["unknown datatype", "FP33"],
    ),
    (
        "data-type-mismatch",
        MLP,
        _json_body(_tensor("x", "FP32", [1, 4], [["a", "b", "c", "d"]])),
        {},
        400,
        ["strings", "FP32"],
    ),
    (
        "shape-vs-data-length",
        MLP,
        _json_body(_tensor("x", "FP32", [1, 4], [1.0, 2.0, 3.0])),
        {},
        400,
        ["Unable to parse 'data': Shape does not match true shape of 'data' field"],
    ),
    (
        "negative-dim",
        MLP,
        _json_body(_tensor("x", "FP32", [-1, 4], GOOD_X)),
        {},
        400,
        ["'shape'"],
    ),
    (
        "shape-vs-model",
        MLP,
        _json_body(_tensor("x", "FP32", [1, 5], [[1.0] * 5])),
        {},
        400,
        ["unexpected shape for input 'x' for model 'mlp'. Expected [-1,4], got [1,5]"],
    ),
    (
        "shape-vs-model-batch-second",
        "/v2/models/batch_second/infer",
        _json_body(_tensor("x", "FP32", [5, 3], [0.0] * 15)),
        {},
        400,
        ["[5,3]", "[3,-1]"],
    ),
    (
        "batch-over-max",
        MLP,
        _json_body(_tensor("x", "FP32", [9, 4], [0.0] * 36)),
        {},
        400,
        ["inference request batch-size must be <= 8 for 'mlp'", "batch size 9"],
    ),
    (
        "body-over-limit",
        MLP,
        b"{" + b" " * MAX_REQUEST_BYTES + b"}",
        {},
        413,
        [str(MAX_REQUEST_BYTES), "limit"],
    ),
    (
        "gzip-bomb-over-limit",
        MLP,
        gzip.compress(b"{" + b" " * (2 * MAX_REQUEST_BYTES) + b"}"),
        {"Content-Encoding": "gzip"},
        413,
        ["decompressed", str(MAX_REQUEST_BYTES)],
    ),
    (
        "bad-gzip",
        MLP,
        b"not gzip at all",
        {"Content-Encoding": "gzip"},
        400,
        ["decompress", "gzip"],
    ),
    (
        "unsupported-content-encoding",
        MLP,
        b"{}",
        {"Content-Encoding": "br"},
        501,
        ["Content-Encoding", "br"],
    ),
    (
        "non-utf8-text-for-onnxruntime",
        "/v2/models/text/infer",
        _NON_UTF8,
        {"Inference-Header-Content-Length": str(_NON_UTF8_LEN)},
        400,
        ["'text'", "UTF-8"],
    ),
    (
        "truncated-binary",
        MLP,
        _TRUNCATED,
        {"Inference-Header-Content-Length": str(_TRUNCATED_LEN)},
        400,
        ["'x'", "binary_data_size is 16", "only 8 remain"],
    ),
    (
        "trailing-binary",
        MLP,
        _TRAILING,
        {"Inference-Header-Content-Length": str(_TRAILING_LEN)},
        400,
        ["4 unexpected trailing byte"],
    ),
    (
        "binary-size-vs-shape",
        MLP,
        _SIZE_MISMATCH,
        {"Inference-Header-Content-Length": str(_SIZE_MISMATCH_LEN)},
        400,
        ["'x'", "12 bytes", "needs 16"],
    ),
    (
        "header-length-too-large",
        MLP,
        _GOOD_BINARY,
        {"Inference-Header-Content-Length": str(len(_GOOD_BINARY) + 1)},
        400,
        ["Inference-Header-Content-Length", str(len(_GOOD_BINARY))],
    ),
    (
        "header-length-too-small",
        MLP,
        _GOOD_BINARY,
        {"Inference-Header-Content-Length": str(_GOOD_BINARY_LEN - 5)},
        400,
        ["malformed JSON"],
    ),
    (
        "header-length-not-a-number",
        MLP,
        _GOOD_BINARY,
        {"Inference-Header-Content-Length": "twelve"},
        400,
        ["Inference-Header-Content-Length", "integer"],
    ),
    (
        "binary-size-without-header",
        MLP,
        json.dumps({"inputs": [_binary_input("x", "FP32", [1, 4], 16)]}),
        {},
        400,
        ["binary_data_size", "Inference-Header-Content-Length"],
    ),
    (
        "bytes-length-overrun",
        "/v2/models/echo_bytes/infer",
        _OVERRUN,
        {"Inference-Header-Content-Length": str(_OVERRUN_LEN)},
        400,
        ["'in'", "declares 100 bytes", "only 8 remain"],
    ),
    (
        "raw-binary-multi-input",
        "/v2/models/alltypes/infer",
        b"\x01\x00\x01",
        {"Inference-Header-Content-Length": "0"},
        400,
        ["exactly one input"],
    ),
    (
        "raw-binary-wrong-size",
        MLP,
        b"\x00" * 10,
        {"Inference-Header-Content-Length": "0"},
        400,
        ["'x'", "needs 16 bytes", "has 10"],
    ),
    (
        "nan-in-int32",
        "/v2/models/echo_i32/infer",
        '{"inputs":[{"name":"in","datatype":"INT32","shape":[2],"data":[1, NaN]}]}',
        {},
        400,
        ["'in'", "nan", "INT32"],
    ),
    (
        "infinity-in-int32",
        "/v2/models/echo_i32/infer",
        '{"inputs":[{"name":"in","datatype":"INT32","shape":[2],"data":[Infinity, 1]}]}',
        {},
        400,
        ["'in'", "inf", "INT32"],
    ),
    (
        "int32-overflow",
        "/v2/models/echo_i32/infer",
        _json_body(_tensor("in", "INT32", [2], [1, 2**31])),
        {},
        400,
        ["'in'", str(2**31), "out of range"],
    ),
    (
        "fp32-overflow",
        MLP,
        _json_body(_tensor("x", "FP32", [1, 4], [1e39, 0, 0, 0])),
        {},
        400,
        ["'x'", "out of range", "FP32"],
    ),
    (
        "fp16-overflow",
        "/v2/models/echo_fp16/infer",
        _json_body(_tensor("in", "FP16", [2], [70000.0, 0])),
        {},
        400,
        ["'in'", "out of range", "FP16"],
    ),
    (
        "unknown-output",
        MLP,
        _json_body(_tensor("x", "FP32", [1, 4], GOOD_X), outputs=[{"name": "nope"}]),
        {},
        400,
        ["unexpected inference output 'nope' for model 'mlp'"],
    ),
    (
        "bad-timeout-parameter",
        MLP,
        _json_body(_tensor("x", "FP32", [1, 4], GOOD_X), parameters={"timeout": "soon"}),
        {},
        400,
        ["timeout"],
    ),
    (
        "unknown-model",
        "/v2/models/nope/infer",
        _json_body(_tensor("x", "FP32", [1, 4], GOOD_X)),
        {},
        404,
        ["'nope'"],
    ),
    (
        "unknown-version",
        "/v2/models/mlp/versions/7/infer",
        _json_body(_tensor("x", "FP32", [1, 4], GOOD_X)),
        {},
        404,
        ["version 7"],
    ),
    (
        "non-integer-version",
        "/v2/models/mlp/versions/latest/infer",
        _json_body(_tensor("x", "FP32", [1, 4], GOOD_X)),
        {},
        400,
        ["version", "'latest'"],
    ),
    (
        "broken-model-not-ready",
        "/v2/models/broken_onnx/infer",
        _json_body(_tensor("x", "FP32", [1, 4], GOOD_X)),
        {},
        503,
        ["'broken_onnx'", "not ready"],
    ),
    ("unknown-route", "/v2/nothing/here", "{}", {}, 404, ["no route"]),
]


def _assert_serving(raw: Any) -> None:
    response = raw("POST", MLP, _json_body(_tensor("x", "FP32", [1, 4], GOOD_X)))
    assert response.status == 200, response.body
    (output,) = response.json()["outputs"]
    np.testing.assert_allclose(output["data"], mlp_expected(np.array(GOOD_X)).ravel(), rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_request(
    raw: Any,
    path: str,
    body: bytes | str | dict[str, Any],
    headers: dict[str, str],
    status: int,
    words: list[str],
) -> None:
    response = raw("POST", path, body, {"Content-Type": "application/json", **headers})
    assert response.status == status, response.body
    assert response.headers["content-type"].startswith("application/json")
    error = response.error
    for word in words:
        assert word.lower() in error.lower(), (word, error)
    _assert_serving(raw)


def test_bad_request_on_kept_alive_connection(server: Any) -> None:
    """An error answer leaves a keep-alive connection usable for the next request."""
    import http.client

    host, port = server.address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for body, status in (
            ('{"inputs": [', 400),
            (json.dumps(_json_body(_tensor("x", "FP32", [1, 4], GOOD_X))), 200),
        ):
            connection.request("POST", MLP, body=body)
            response = connection.getresponse()
            response.read()
            assert response.status == status
    finally:
        connection.close()


def test_tritonclient_sees_errors(client: httpclient.InferenceServerClient) -> None:
    """What tritonclient can send wrong it gets back as an exception with the status."""
    inp = httpclient.InferInput("x", [9, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((9, 4), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlp", [inp])
    assert info.value.status() == "400"
    assert "batch size 9" in info.value.message()
    inp = httpclient.InferInput("x", [1, 4], "FP64")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float64))
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlp", [inp])
    assert info.value.status() == "400"
    assert "FP64" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", [inp])
    assert info.value.status() == "404"
    big = httpclient.InferInput("x", [8, 4], "FP32")
    big.set_data_from_numpy(np.zeros((8, 4), np.float32))
    huge = np.zeros(MAX_REQUEST_BYTES // 4, np.float32)
    extra = httpclient.InferInput("y", list(huge.shape), "FP32")
    extra.set_data_from_numpy(huge, binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlp", [big, extra])
    assert info.value.status() == "413"
    assert client.is_server_ready()


# -- scheduling errors: queue full, timeout, a failing batch --------------------------------------


def _echo_request(value: float, **extra: Any) -> dict[str, Any]:
    return _json_body(_tensor("in", "FP32", [2], [value, value]), **extra)


def _post_many(server: Any, path: str, bodies: list[dict[str, Any]]) -> list[RawResponse]:
    """Send ``bodies`` at once, each on its own connection."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(raw_request, server.address, "POST", path, body) for body in bodies]
        return [f.result() for f in futures]


def test_queue_full_is_503(server: Any, raw: Any) -> None:
    # tiny_queue: one instance, 300 ms per request, at most one request waiting.
    responses = _post_many(
        server, "/v2/models/tiny_queue/infer", [_echo_request(i) for i in range(5)]
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) >= 1
    assert statuses.count(503) >= 3  # at most one running plus one waiting can succeed
    assert set(statuses) == {200, 503}
    for response in responses:
        if response.status == 503:
            assert "queue is full" in response.error
    # Once the queue drains the model serves again.
    response = raw("POST", "/v2/models/tiny_queue/infer", _echo_request(9))
    assert response.status == 200
    assert response.json()["outputs"][0]["data"] == [9.0, 9.0]


def test_request_timeout_expires(server: Any, client: httpclient.InferenceServerClient) -> None:
    # slow: one instance, 500 ms per request. A request queued behind one that is running,
    # with a 50 ms timeout (tritonclient's ``timeout``, in µs), expires before the instance
    # frees up.
    first: list[RawResponse] = []
    thread = threading.Thread(
        target=lambda: first.append(
            raw_request(server.address, "POST", "/v2/models/slow/infer", _echo_request(1))
        )
    )
    thread.start()
    time.sleep(0.15)
    inp = httpclient.InferInput("in", [2], "FP32")
    inp.set_data_from_numpy(np.array([2.0, 2.0], np.float32))
    began = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [inp], timeout=50_000)
    waited = time.monotonic() - began
    thread.join()
    assert info.value.status() == "503"
    assert "timed out" in info.value.message()
    assert waited < 0.45  # answered when the timeout fired, not when the instance freed up
    assert first[0].status == 200
    # A generous timeout does not expire.
    result = client.infer("slow", [inp], timeout=5_000_000)
    np.testing.assert_array_equal(result.as_numpy("out"), [2.0, 2.0])


def test_failing_batch_fails_only_its_requests(server: Any) -> None:
    # failer: fails any batch holding -1. Good requests sent at the same time all succeed.
    bodies = [_echo_request(-1.0 if i == 2 else float(i)) for i in range(6)]
    responses = _post_many(server, "/v2/models/failer/infer", bodies)
    for i, response in enumerate(responses):
        if i == 2:
            assert response.status == 500, response.body
            assert "fail_value" in response.error
        else:
            assert response.status == 200, response.body
            assert response.json()["outputs"][0]["data"] == [float(i), float(i)]
    stats = raw_request(server.address, "GET", "/v2/models/failer/stats").json()
    (entry,) = stats["model_stats"]
    assert entry["inference_stats"]["fail"]["count"] >= 1
    assert entry["inference_stats"]["success"]["count"] >= 5
