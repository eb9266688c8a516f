"""Every bad gRPC request gets the right status code and a message that names the problem (the
HTTP matrix's words where the fault is the same), and the server keeps serving afterwards.
Built with the generated stub, because tritonclient refuses to build most of these."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from modelrepo import mlp_expected
from rawhttp import MAX_REQUEST_BYTES
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GOOD_X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


@pytest.fixture
def channel(server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        server.grpc_address, options=[("grpc.max_send_message_length", 4 * MAX_REQUEST_BYTES)]
    ) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _request(model: str = "mlp", version: str = "", **fields: Any) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, model_version=version, **fields)


def _input(
    request: pb.ModelInferRequest, name: str, datatype: str, shape: list[int]
) -> pb.ModelInferRequest.InferInputTensor:
    return request.inputs.add(name=name, datatype=datatype, shape=shape)


def _raw(
    model: str,
    *tensors: tuple[str, str, list[int], bytes],
    version: str = "",
) -> pb.ModelInferRequest:
    request = _request(model, version)
    for name, datatype, shape, blob in tensors:
        _input(request, name, datatype, shape)
        request.raw_input_contents.append(blob)
    return request


def _good_x(model: str = "mlp", version: str = "") -> pb.ModelInferRequest:
    return _raw(model, ("x", "FP32", [1, 4], GOOD_X.tobytes()), version=version)


def _typed(model: str, name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    request = _request(model)
    tensor = _input(request, name, datatype, shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


def _with(request: pb.ModelInferRequest, edit: Callable[[pb.ModelInferRequest], Any]) -> Any:
    edit(request)
    return request


def _classification(request: pb.ModelInferRequest, count: int) -> None:
    request.outputs.add(name="y").parameters["classification"].int64_param = count


_OVERRUN = struct.pack("<I", 100) + b"abc" + struct.pack("<I", 1) + b"d"
_NON_UTF8 = struct.pack("<I", 2) + b"\xff\xfe"

# (id, request, code, words the message must contain)
CASES: list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, list[str]]] = [
    ("no-inputs", _request(), INVALID, ["'inputs'"]),
    (
        "missing-input",
        _raw("alltypes", ("IN_BOOL", "BOOL", [1, 3], b"\x01\x00\x01")),
        INVALID,
        ["IN_FP32", "missing required input"],
    ),
    (
        "unknown-input",
        _raw("mlp", ("z", "FP32", [1, 4], GOOD_X.tobytes())),
        INVALID,
        ["unexpected inference input 'z'", "'x'"],
    ),
    (
        "duplicate-input",
        _raw(
            "mlp", ("x", "FP32", [1, 4], GOOD_X.tobytes()), ("x", "FP32", [1, 4], GOOD_X.tobytes())
        ),
        INVALID,
        ["'x'", "more than once"],
    ),
    ("wrong-datatype", _raw("mlp", ("x", "INT32", [1, 4], bytes(16))), INVALID, ["INT32", "FP32"]),
    (
        "unknown-datatype",
        _raw("mlp", ("x", "FP33", [1, 4], bytes(16))),
        INVALID,
        ["unknown datatype", "FP33"],
    ),
    (
        "typed-contents-of-another-type",
        _typed("mlp", "x", "FP32", [1, 4], int_contents=[1, 2, 3, 4]),
        INVALID,
        ["FP32", "int_contents", "fp32_contents"],
    ),
    (
        "typed-count-vs-shape",
        _typed("mlp", "x", "FP32", [1, 4], fp32_contents=[1.0, 2.0, 3.0]),
        INVALID,
        ["'x'", "needs 4 element(s)", "holds 3"],
    ),
    (
        "typed-int8-out-of-range",
        _typed("alltypes", "IN_INT8", "INT8", [1, 3], int_contents=[1, 300, 2]),
        INVALID,
        ["'IN_INT8'", "300", "out of range"],
    ),
    ("negative-dim", _raw("mlp", ("x", "FP32", [-1, 4], bytes(16))), INVALID, ["'shape'"]),
    ("shape-vs-model", _raw("mlp", ("x", "FP32", [1, 5], bytes(20))), INVALID, ["[1,5]", "[-1,4]"]),
    (
        "shape-vs-model-batch-second",
        _raw("batch_second", ("x", "FP32", [5, 3], bytes(60))),
        INVALID,
        ["[5,3]", "[3,-1]"],
    ),
    (
        "batch-over-max",
        _raw("mlp", ("x", "FP32", [9, 4], bytes(144))),
        INVALID,
        ["batch size 9", "batch-size must be <= 8"],
    ),
    (
        "non-utf8-text-for-onnxruntime",
        _raw("text", ("text", "BYTES", [1, 1], _NON_UTF8)),
        INVALID,
        ["'text'", "UTF-8"],
    ),
    (
        "raw-size-vs-shape",
        _raw("mlp", ("x", "FP32", [1, 4], bytes(12))),
        INVALID,
        ["'x'", "12 bytes", "needs 16"],
    ),
    (
        "raw-count-vs-inputs",
        _with(_good_x(), lambda r: r.raw_input_contents.append(b"extra")),
        INVALID,
        ["raw_input_contents has 2", "1 input"],
    ),
    (
        "raw-and-typed",
        _with(_good_x(), lambda r: r.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])),
        INVALID,
        ["'x'", "contents", "raw_input_contents"],
    ),
    (
        "no-data",
        _with(_request(), lambda r: _input(r, "x", "FP32", [1, 4])),
        INVALID,
        ["'x'", "no data"],
    ),
    (
        "fp16-in-typed-contents",
        _typed("echo_fp16", "in", "FP16", [2], fp32_contents=[1.0, 2.0]),
        INVALID,
        ["FP16", "raw_input_contents"],
    ),
    (
        "bytes-length-overrun",
        _raw("echo_bytes", ("in", "BYTES", [2], _OVERRUN)),
        INVALID,
        ["'in'", "declares 100 bytes", "only 8 remain"],
    ),
    (
        "unknown-output",
        _with(_good_x(), lambda r: r.outputs.add(name="nope")),
        INVALID,
        ["unexpected inference output 'nope'"],
    ),
    (
        "negative-classification",
        _with(_good_x(), lambda r: _classification(r, -2)),
        INVALID,
        ["classification"],
    ),
    (
        "bad-timeout-parameter",
        _with(_good_x(), lambda r: setattr(r.parameters["timeout"], "string_param", "soon")),
        INVALID,
        ["timeout"],
    ),
    (
        "shared-memory-input",
        _with(
            _good_x(),
            lambda r: setattr(r.inputs[0].parameters["shared_memory_region"], "string_param", "r"),
        ),
        grpc.StatusCode.PERMISSION_DENIED,  # the shared server runs without --allow-client-shm
        ["Client shared memory is disabled", "--allow-client-shm"],
    ),
    ("unknown-model", _good_x("nope"), grpc.StatusCode.NOT_FOUND, ["'nope'"]),
    ("unknown-version", _good_x("mlp", "7"), grpc.StatusCode.NOT_FOUND, ["version 7"]),
    ("non-integer-version", _good_x("mlp", "latest"), INVALID, ["version", "'latest'"]),
    (
        "broken-model-not-ready",
        _good_x("broken_onnx"),
        grpc.StatusCode.UNAVAILABLE,
        ["'broken_onnx'", "not ready"],
    ),
]


def _assert_serving(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(_good_x())
    y = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 3)
    np.testing.assert_allclose(y, mlp_expected(GOOD_X), rtol=1e-6)


@pytest.mark.parametrize(
    ("request_", "code", "words"), [pytest.param(*case[1:], id=case[0]) for case in CASES]
)
def test_bad_request(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    request_: pb.ModelInferRequest,
    code: grpc.StatusCode,
    words: list[str],
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_)
    assert info.value.code() is code, info.value.details()
    details = info.value.details()
    for word in words:
        assert word.lower() in details.lower(), (word, details)
    _assert_serving(stub)


def test_garbage_bytes(channel: grpc.Channel, stub: Any) -> None:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff")
    assert info.value.code() is INVALID
    assert "not a valid ModelInferRequest" in info.value.details()
    _assert_serving(stub)


def test_message_over_limit(stub: Any) -> None:
    """The server's gRPC limit defaults to its HTTP body limit (1 MiB for this server)."""
    big = _raw("mlp", ("x", "FP32", [1, 4], bytes(MAX_REQUEST_BYTES + 16)))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(big)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_REQUEST_BYTES) in info.value.details()
    _assert_serving(stub)


def test_repository_refused_outside_explicit_mode(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "explicit model load / unload is not allowed" in info.value.details()


def test_repository_errors(start_server: Any, main_repository: Any) -> None:
    server = start_server(
        main_repository, "--model-control-mode", "explicit", "--allow-model-upload",
        "--load-model", "mlp", "--no-strict-readiness", "--log-level", "WARNING",
    )  # fmt: skip
    with grpc.insecure_channel(server.grpc_address) as channel:
        _repository_errors(service_pb2_grpc.GRPCInferenceServiceStub(channel))


def _repository_errors(stub: Any) -> None:
    def load(name: str, **params: pb.ModelRepositoryParameter) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=name, parameters=params)
            )
        return info.value

    error = load("not_in_repository")
    assert error.code() is grpc.StatusCode.NOT_FOUND and "not_in_repository" in error.details()
    error = load("mlp", config=pb.ModelRepositoryParameter(string_param="{oops"))
    assert error.code() is INVALID and "'config' is not valid JSON" in error.details()
    error = load("mlp", **{"file:1/model.onnx": pb.ModelRepositoryParameter(bytes_param=b"x")})
    assert error.code() is INVALID and "must also carry 'config'" in error.details()
    error = load("mlp", **{"file:1/model.onnx": pb.ModelRepositoryParameter(string_param="eA==")})
    assert error.code() is INVALID and "file's bytes" in error.details()
    error = load("mlp", nonsense=pb.ModelRepositoryParameter(bool_param=True))
    assert error.code() is INVALID and "unknown load parameter 'nonsense'" in error.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="not_in_repository"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    _assert_serving(stub)
