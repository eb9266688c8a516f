"""A real server driven over gRPC by the official ``tritonclient.grpc``: every RPC of Triton's
``GRPCInferenceService``, streaming, typed and raw contents, every datatype, and the health
service. The same server process answers HTTP (one engine behind both)."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from modelrepo import DATATYPES, MLP_LABELS, add_onnx, mlp_expected, null_config, write_model
from rawhttp import raw_request
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException


@pytest.fixture
def gclient(server: Any) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        yield triton
    finally:
        triton.close()


@pytest.fixture
def stub(server: Any) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """The raw generated stub, for messages tritonclient will not build."""
    channel = grpc.insecure_channel(server.grpc_address)
    try:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    finally:
        channel.close()


def _x(rows: int = 1) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("x", [rows, 4], "FP32")
    inp.set_data_from_numpy(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))
    return inp


# -- health and metadata ----------------------------------------------------------------------


def test_live_ready_and_health_check(
    gclient: grpcclient.InferenceServerClient, server: Any
) -> None:
    assert gclient.is_server_live()
    assert gclient.is_server_ready()
    assert gclient.is_model_ready("mlp")
    assert gclient.is_model_ready("versioned", "2")
    assert not gclient.is_model_ready("versioned", "9")
    assert not gclient.is_model_ready("broken_onnx")
    assert not gclient.is_model_ready("no_such_model")

    # grpc.health.v1: HealthCheckRequest{service=1} / HealthCheckResponse{status=1}; 1 = SERVING.
    with grpc.insecure_channel(server.grpc_address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"") == b"\x08\x01"
        service = b"inference.GRPCInferenceService"
        assert check(b"\x0a" + bytes([len(service)]) + service) == b"\x08\x01"
        with pytest.raises(grpc.RpcError) as info:
            check(b"\x0a\x04nope")
        assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_server_and_model_metadata(gclient: grpcclient.InferenceServerClient) -> None:
    server = gclient.get_server_metadata()
    assert server.name == "forwardpass" and server.version
    assert {"classification", "model_repository", "statistics"} <= set(server.extensions)
    meta = gclient.get_model_metadata("mlp")
    assert (meta.name, list(meta.versions), meta.platform) == ("mlp", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 3])]
    assert list(gclient.get_model_metadata("versioned").versions) == ["1", "2"]
    with pytest.raises(InferenceServerException) as info:
        gclient.get_model_metadata("no_such_model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "'no_such_model'" in info.value.message()


def test_model_config_matches_http(gclient: grpcclient.InferenceServerClient, server: Any) -> None:
    config = gclient.get_model_config("mlp").config
    assert (config.name, config.max_batch_size) == ("mlp", 8)
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [4]
    assert config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 20000
    # Field for field what HTTP answers.
    http = raw_request(server.address, "GET", "/v2/models/mlp/config").json()
    assert config == json_format.ParseDict(http, model_config_pb2.ModelConfig())
    assert len(gclient.get_model_config("alltypes").config.input) == len(DATATYPES)


# -- inference --------------------------------------------------------------------------------


def test_mlp_raw_contents(gclient: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    inp = grpcclient.InferInput("x", [5, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = gclient.infer("mlp", [inp], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("y"), mlp_expected(x), rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response.id == "req-7"
    assert response.model_name == "mlp" and response.model_version == "1"
    assert len(response.raw_output_contents) == 1  # answered raw, as Triton does


def _alltypes_data() -> dict[str, np.ndarray]:
    data: dict[str, np.ndarray] = {}
    for datatype, (_, dtype) in DATATYPES.items():
        if datatype == "BOOL":
            data[datatype] = np.array([[True, False, True], [False, False, True]])
        elif datatype == "BYTES":
            data[datatype] = np.array([[b"a", b"", "\u00e9".encode()], [b"x\x00y", b"b", b"c"]])
        elif datatype in ("FP16", "FP32", "FP64"):
            data[datatype] = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -0.0]], dtype)
        else:
            info = np.iinfo(dtype)
            data[datatype] = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype)
    return data


def test_every_datatype_raw(gclient: grpcclient.InferenceServerClient) -> None:
    data = _alltypes_data()
    inputs = []
    for datatype, array in data.items():
        inp = grpcclient.InferInput(f"IN_{datatype}", list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    result = gclient.infer("alltypes", inputs)
    for datatype, array in data.items():
        got = result.as_numpy(f"OUT_{datatype}")
        assert got is not None and got.shape == array.shape, datatype
        if datatype == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(result.as_numpy("OUT_CAST"), data["INT32"].astype(np.float64))


_TYPED = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _typed_input(name: str, datatype: str, array: np.ndarray) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=list(array.shape)
    )
    getattr(tensor.contents, _TYPED[datatype]).extend(array.reshape(-1).tolist())
    return tensor


def test_every_datatype_typed_contents(stub: Any) -> None:
    """Typed ``contents`` for every type that has a field (all but FP16 and BF16)."""
    data = {t: a for t, a in _alltypes_data().items() if t != "FP16"}
    request = pb.ModelInferRequest(model_name="alltypes_typed", id="typed")
    for datatype, array in data.items():
        request.inputs.append(_typed_input(f"IN_{datatype}", datatype, array))
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    assert len(response.raw_output_contents) == len(response.outputs)  # answered raw
    result = grpcclient.InferResult(response)
    for datatype, array in data.items():
        got = result.as_numpy(f"OUT_{datatype}")
        assert got is not None and got.shape == array.shape, datatype
        assert got.tolist() == array.tolist(), datatype
        if datatype != "BYTES":
            assert got.dtype == array.dtype, datatype


def test_typed_contents_round_trip(stub: Any) -> None:
    cases = [
        ("echo_i32", "INT32", np.array([-(2**31), 2**31 - 1], np.int32)),
        ("echo_bytes", "BYTES", np.array([b"abc", b"", b"\xff\x00"], object)),
    ]
    for model, datatype, array in cases:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.append(_typed_input("in", datatype, array))
        response = stub.ModelInfer(request)
        (output,) = response.outputs
        assert output.datatype == datatype and list(output.shape) == list(array.shape)
        result = grpcclient.InferResult(response)
        assert result.as_numpy("out").tolist() == array.tolist()
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.append(_typed_input("x", "FP32", np.ones((2, 4), np.float32)))
    y = grpcclient.InferResult(stub.ModelInfer(request)).as_numpy("y")
    np.testing.assert_allclose(y, mlp_expected(np.ones((2, 4))), rtol=1e-6)


def test_fp16_and_bf16_raw(gclient: grpcclient.InferenceServerClient) -> None:
    array = np.array([0.5, -65504.0], np.float16)
    inp = grpcclient.InferInput("in", [2], "FP16")
    inp.set_data_from_numpy(array)
    got = gclient.infer("echo_fp16", [inp]).as_numpy("out")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, array)


def test_classification(gclient: grpcclient.InferenceServerClient) -> None:
    x = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    expected = mlp_expected(x)
    inp = grpcclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    out = grpcclient.InferRequestedOutput("y", class_count=2)
    classes = gclient.infer("mlp", [inp], outputs=[out]).as_numpy("y")
    assert classes is not None and classes.shape == (2, 2)
    for row, scores in zip(classes, expected, strict=True):
        top = np.argsort(-scores, kind="stable")[:2]
        for entry, index in zip(row, top, strict=True):
            value, got_index, label = entry.decode().split(":")
            assert int(got_index) == index and label == MLP_LABELS[index]
            assert float(value) == pytest.approx(float(scores[index]), abs=1e-5)


def test_versions_and_requested_outputs(gclient: grpcclient.InferenceServerClient) -> None:
    inp = grpcclient.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 2), np.float32))
    assert gclient.infer("versioned", [inp], model_version="1").as_numpy("y").tolist() == [[1, 1]]
    assert gclient.infer("versioned", [inp]).as_numpy("y").tolist() == [[2, 2]]
    out = [grpcclient.InferRequestedOutput("OUT_CAST")]
    ints = grpcclient.InferInput("IN_INT32", [1, 3], "INT32")
    ints.set_data_from_numpy(np.array([[1, 2, 3]], np.int32))
    data = _alltypes_data()
    inputs = [ints]
    for datatype, array in data.items():
        if datatype != "INT32":
            other = grpcclient.InferInput(f"IN_{datatype}", [1, 3], datatype)
            other.set_data_from_numpy(array[:1])
            inputs.append(other)
    response = gclient.infer("alltypes", inputs, outputs=out).get_response()
    assert [o.name for o in response.outputs] == ["OUT_CAST"]


def test_statistics_after_traffic(gclient: grpcclient.InferenceServerClient) -> None:
    def count() -> int:
        (stats,) = gclient.get_inference_statistics("echo_i32").model_stats
        return stats.inference_stats.success.count

    before = count()
    inp = grpcclient.InferInput("in", [2], "INT32")
    inp.set_data_from_numpy(np.array([1, 2], np.int32))
    for _ in range(3):
        gclient.infer("echo_i32", [inp])
    assert count() == before + 3
    everything = gclient.get_inference_statistics().model_stats
    assert {"mlp", "echo_i32"} <= {s.name for s in everything}
    (versioned,) = gclient.get_inference_statistics("versioned", "2").model_stats
    assert versioned.version == "2"
    with pytest.raises(InferenceServerException) as info:
        gclient.get_inference_statistics("no_such_model")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_repository_index(gclient: grpcclient.InferenceServerClient) -> None:
    rows = gclient.get_model_repository_index().models
    by_name = {(r.name, r.version): r for r in rows}
    assert by_name[("mlp", "1")].state == "READY"
    assert by_name[("versioned", "2")].state == "READY"
    broken = [r for r in rows if r.name == "broken_onnx"]
    assert broken and broken[0].state == "UNAVAILABLE" and "ONNX" in broken[0].reason
    ready = {r.name for r in gclient.get_model_repository_index().models if r.state == "READY"}
    assert "broken_onnx" not in ready


def test_one_engine_behind_both_protocols(
    gclient: grpcclient.InferenceServerClient, server: Any
) -> None:
    (before,) = gclient.get_inference_statistics("scalar").model_stats
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [], "data": [1.0]}]}
    assert raw_request(server.address, "POST", "/v2/models/scalar/infer", body).status == 200
    (after,) = gclient.get_inference_statistics("scalar").model_stats
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1


# -- streaming --------------------------------------------------------------------------------


def _stream(gclient: grpcclient.InferenceServerClient) -> queue.Queue[Any]:
    answers: queue.Queue[Any] = queue.Queue()
    gclient.start_stream(callback=lambda result, error: answers.put((result, error)))
    return answers


def test_stream_answers_in_arrival_order(gclient: grpcclient.InferenceServerClient) -> None:
    answers = _stream(gclient)
    try:
        slow = grpcclient.InferInput("in", [2], "FP32")
        slow.set_data_from_numpy(np.array([7.0, 7.0], np.float32))
        gclient.async_stream_infer("slow", [slow], request_id="slow")  # 500 ms
        for k in range(3):
            gclient.async_stream_infer("mlp", [_x()], request_id=f"fast-{k}")
        got = [answers.get(timeout=30) for _ in range(4)]
    finally:
        gclient.stop_stream()
    assert [error for _, error in got] == [None] * 4
    assert [r.get_response().id for r, _ in got] == ["slow", "fast-0", "fast-1", "fast-2"]
    assert got[0][0].as_numpy("out").tolist() == [7.0, 7.0]
    expected = mlp_expected(np.arange(4, dtype=np.float32).reshape(1, 4))
    np.testing.assert_allclose(got[1][0].as_numpy("y"), expected, rtol=1e-6)


def test_stream_keeps_going_after_bad_requests(gclient: grpcclient.InferenceServerClient) -> None:
    answers = _stream(gclient)
    try:
        gclient.async_stream_infer("mlp", [_x()], request_id="good-1")
        gclient.async_stream_infer("no_such_model", [_x()], request_id="bad-model")
        gclient.async_stream_infer("mlp", [_x(9)], request_id="bad-batch")
        gclient.async_stream_infer("mlp", [_x(2)], request_id="good-2")
        got = [answers.get(timeout=30) for _ in range(4)]
    finally:
        gclient.stop_stream()
    (r1, e1), (_, e2), (_, e3), (r4, e4) = got
    assert e1 is None and r1.get_response().id == "good-1"
    assert e2 is not None and "'no_such_model'" in e2.message()
    assert e3 is not None and "batch size 9" in e3.message()
    assert e4 is None and r4.as_numpy("y").shape == (2, 3)


def test_stream_survives_garbage_messages(server: Any) -> None:
    """Bytes that are not a ModelInferRequest, between valid requests, on one raw stream."""
    good = pb.ModelInferRequest(model_name="echo_i32", id="ok")
    tensor = good.inputs.add(name="in", datatype="INT32", shape=[2])
    tensor.contents.int_contents.extend([4, 5])
    messages = [good.SerializeToString(), b"\xff\xff\xff", good.SerializeToString()]
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        responses = list(call(iter(messages), timeout=30))
    assert len(responses) == 3
    assert responses[0].error_message == "" and responses[0].infer_response.id == "ok"
    assert "not a valid ModelInferRequest" in responses[1].error_message
    assert responses[2].error_message == ""
    result = grpcclient.InferResult(responses[2].infer_response)
    assert result.as_numpy("out").tolist() == [4, 5]


# -- lifecycle ---------------------------------------------------------------------------------


def test_graceful_stop_drains_grpc(start_server: Any, main_repository: Any) -> None:
    server = start_server(
        main_repository,
        "--model-control-mode",
        "explicit",
        "--model",
        "slow",
        "--log-level",
        "WARNING",
    )
    client = grpcclient.InferenceServerClient(server.grpc_address)
    answers: queue.Queue[Any] = queue.Queue()
    inp = grpcclient.InferInput("in", [2], "FP32")
    inp.set_data_from_numpy(np.array([3.0, 3.0], np.float32))
    client.async_infer("slow", [inp], callback=lambda result, error: answers.put((result, error)))
    time.sleep(0.2)  # in flight (500 ms)
    assert server.stop() == 0
    result, error = answers.get(timeout=10)
    client.close()
    assert error is None, error
    assert result.as_numpy("out").tolist() == [3.0, 3.0]


# -- repository -------------------------------------------------------------------------------


def test_repository_load_unload_with_config_and_files(start_server: Any, tmp_path: Any) -> None:
    root = tmp_path / "models"
    write_model(root, "lazy", versions={1: add_onnx(10.0, ["batch", 2])})
    write_model(root, "echo", config=null_config("echo", max_batch_size=4))
    server = start_server(
        root,
        "--model-control-mode",
        "explicit",
        "--allow-model-upload",
        "--model",
        "echo",
        "--log-level",
        "WARNING",
    )
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        x = np.array([[1.0, 2.0]], np.float32)

        def add(model: str, data: np.ndarray) -> np.ndarray:
            inp = grpcclient.InferInput("x", list(data.shape), "FP32")
            inp.set_data_from_numpy(data)
            return client.infer(model, [inp]).as_numpy("y")

        states = {r.name: r.state for r in client.get_model_repository_index().models}
        assert states["lazy"] == "" and states["echo"] == "READY"
        client.load_model("lazy")
        np.testing.assert_array_equal(add("lazy", x), x + 10)

        client.load_model(
            "lazy", config=json.dumps({"platform": "onnxruntime_onnx", "max_batch_size": 2})
        )
        assert client.get_model_config("lazy").config.max_batch_size == 2
        with pytest.raises(InferenceServerException) as info:
            add("lazy", np.zeros((3, 2), np.float32))
        assert "batch size 3" in info.value.message()

        model = add_onnx(5.0, ["batch", 2])
        config = json.dumps({"platform": "onnxruntime_onnx", "max_batch_size": 4})
        client.load_model("uploaded", config=config, files={"file:1/model.onnx": model})
        np.testing.assert_array_equal(add("uploaded", x), x + 5)
        assert (root / "uploaded" / "1" / "model.onnx").read_bytes() == model

        client.unload_model("lazy")
        assert not client.is_model_ready("lazy")
        row = next(r for r in client.get_model_repository_index().models if r.name == "lazy")
        assert (row.state, row.reason) == ("UNAVAILABLE", "unloaded")
        with pytest.raises(InferenceServerException) as info:
            add("lazy", x)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()


def test_no_grpc_flag(start_server: Any, main_repository: Any) -> None:
    server = start_server(
        main_repository,
        "--no-grpc",
        "--model-control-mode",
        "explicit",
        "--model",
        "mlp",
        "--log-level",
        "WARNING",
    )
    assert server.grpc_address == ""
    assert raw_request(server.address, "GET", "/v2/health/ready").status == 200
