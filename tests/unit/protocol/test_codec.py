"""The HTTP codec against the official client: tritonclient writes requests, reads responses."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from forwardpass.datatypes import DataType, bf16_from_float32
from forwardpass.errors import InternalError, InvalidArgument, PermissionDenied
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.protocol.codec import (
    decode_infer_request,
    encode_error,
    encode_infer_response,
)
from forwardpass.types import InferRequest, InferResponse, RequestedOutput, Tensor

ALL_TYPES = list(DataType)


def sample(datatype: DataType, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """An array as forwardpass holds it, with the extremes of integer types included."""
    rng = np.random.default_rng(7)
    n = math.prod(shape)
    if datatype is DataType.BOOL:
        flat = np.arange(n) % 3 == 0
    elif datatype is DataType.BYTES:
        flat = np.empty(n, dtype=object)
        flat[:] = [f"s{i} é ✓".encode() for i in range(n)]
    elif datatype is DataType.BF16:
        flat = bf16_from_float32(rng.standard_normal(n).astype(np.float32) * 100)
    elif datatype.is_float:
        flat = (rng.standard_normal(n) * 100).astype(datatype.numpy)
    else:
        info = np.iinfo(datatype.numpy)
        flat = rng.integers(info.min, info.max, n, endpoint=True, dtype=datatype.numpy)
        flat[0], flat[-1] = info.min, info.max
    return flat.reshape(shape)


def client_array(datatype: DataType, array: np.ndarray) -> np.ndarray:
    """The same tensor as tritonclient wants it (BF16 as ml_dtypes.bfloat16)."""
    return array.view(ml_dtypes.bfloat16) if datatype is DataType.BF16 else array


def triton_body(
    arrays: dict[str, tuple[DataType, np.ndarray]],
    binary: bool,
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    **kwargs: object,
) -> tuple[bytes, int | None]:
    inputs = []
    for name, (datatype, array) in arrays.items():
        item = httpclient.InferInput(name, list(array.shape), datatype.value)
        item.set_data_from_numpy(client_array(datatype, array), binary_data=binary)
        inputs.append(item)
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)


def decode(body: bytes, header_length: int | None = None, **kwargs: object) -> InferRequest:
    return decode_infer_request(body, model_name="m", header_length=header_length, **kwargs)


def json_request(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def fp32(name: str = "x", shape: list | None = None, data: object = None, **extra: object) -> dict:
    shape = [1, 2] if shape is None else shape
    data = [1.0, 2.0] if data is None else data
    return {"name": name, "datatype": "FP32", "shape": shape, "data": data, **extra}


# -- requests written by tritonclient ---------------------------------------------------------


# tritonclient refuses to send BF16 as JSON; test_bf16_json_input covers that case.
@pytest.mark.parametrize(
    ("datatype", "binary"),
    [(t, b) for t in ALL_TYPES for b in (False, True) if b or t is not DataType.BF16],
    ids=lambda v: v.value if isinstance(v, DataType) else ("binary" if v else "json"),
)
def test_every_datatype_decodes_from_tritonclient(datatype: DataType, binary: bool) -> None:
    array = sample(datatype)
    body, json_size = triton_body({"in": (datatype, array)}, binary, request_id="r1")
    assert (json_size is not None) is binary

    request = decode(body, json_size)

    (tensor,) = request.inputs
    assert tensor.name == "in"
    assert tensor.datatype is datatype
    assert tensor.parameters == {}  # binary_data_size consumed
    assert tensor.data.dtype == datatype.numpy
    assert tensor.data.shape == array.shape
    assert np.array_equal(tensor.data, array)
    assert request.id == "r1"
    assert request.model_name == "m"
    # No outputs named: tritonclient asks for everything in binary.
    assert request.outputs is None
    assert request.parameters == {"binary_data_output": True}


def test_mixed_json_and_binary_inputs_in_body_order() -> None:
    a, b, c = sample(DataType.INT32), sample(DataType.BYTES, (3,)), sample(DataType.FP16)
    inputs = []
    for name, datatype, array, binary in [
        ("a", DataType.INT32, a, True),
        ("b", DataType.BYTES, b, False),
        ("c", DataType.FP16, c, True),
    ]:
        item = httpclient.InferInput(name, list(array.shape), datatype.value)
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)

    request = decode(body, json_size)

    got = {t.name: t.data for t in request.inputs}
    assert np.array_equal(got["a"], a)
    assert list(got["b"]) == list(b)
    assert np.array_equal(got["c"], c)


def test_outputs_and_parameters_from_tritonclient() -> None:
    outputs = [
        httpclient.InferRequestedOutput("probs", binary_data=False, class_count=3),
        httpclient.InferRequestedOutput("emb", binary_data=True),
    ]
    body, json_size = triton_body(
        {"x": (DataType.FP32, sample(DataType.FP32))},
        binary=False,
        outputs=outputs,
        priority=2,
        timeout=1000,
        parameters={"custom": "yes", "k": 1.5},
    )

    request = decode(body, json_size)

    assert request.outputs == [
        RequestedOutput("probs", {"classification": 3, "binary_data": False}),
        RequestedOutput("emb", {"binary_data": True}),
    ]
    assert request.parameters == {"priority": 2, "timeout": 1000, "custom": "yes", "k": 1.5}


def test_nan_and_infinity_from_tritonclient() -> None:
    # tritonclient (rapidjson) writes NaN/Infinity tokens, which Triton's parser accepts.
    array = np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=np.float32)
    body, _ = triton_body({"x": (DataType.FP32, array)}, binary=False)
    assert b"NaN" in body

    data = decode(body).inputs[0].data

    assert np.array_equal(data, array, equal_nan=True)


def test_bf16_json_input() -> None:
    values = [1.0, -2.5, 3.140625, 0.0]
    request = decode(json_request({"name": "x", "datatype": "BF16", "shape": [4], "data": values}))
    data = request.inputs[0].data
    assert data.dtype == np.uint16
    assert np.array_equal(data.view(ml_dtypes.bfloat16).astype(np.float32), values)


# -- JSON decoding ----------------------------------------------------------------------------


def test_nested_and_flat_data_are_the_same_row_major_tensor() -> None:
    flat = decode(json_request(fp32(shape=[2, 3], data=[1, 2, 3, 4, 5, 6])))
    nested = decode(json_request(fp32(shape=[2, 3], data=[[1, 2, 3], [4, 5, 6]])))
    other = decode(json_request(fp32(shape=[2, 3], data=[[1, 2], [3, 4], [5, 6]])))
    expected = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    for request in (flat, nested, other):
        assert np.array_equal(request.inputs[0].data, expected)
        assert request.inputs[0].data.dtype == np.float32


def test_empty_tensor() -> None:
    tensor = decode(json_request(fp32(shape=[0, 4], data=[]))).inputs[0]
    assert tensor.data.shape == (0, 4)
    body = json_request({"name": "x", "datatype": "INT64", "shape": [0], "data": []})
    assert decode(body).inputs[0].data.shape == (0,)


def test_integral_floats_fill_integer_tensors() -> None:
    body = json_request({"name": "x", "datatype": "INT16", "shape": [3], "data": [1.0, -2, 3]})
    data = decode(body).inputs[0].data
    assert data.dtype == np.int16
    assert data.tolist() == [1, -2, 3]


def test_64_bit_integer_extremes_are_exact() -> None:
    body = json_request(
        {"name": "a", "datatype": "UINT64", "shape": [2], "data": [0, 2**64 - 1]},
        {"name": "b", "datatype": "INT64", "shape": [2], "data": [-(2**63), 2**63 - 1]},
    )
    a, b = decode(body).inputs
    assert a.data.tolist() == [0, 2**64 - 1]
    assert b.data.tolist() == [-(2**63), 2**63 - 1]


def test_request_fields_are_kept() -> None:
    body = json_request(
        fp32(parameters={"note": "kept"}),
        id="abc",
        parameters={"binary_data_output": False, "priority": 1},
        outputs=[{"name": "y"}, {"name": "z", "parameters": {"classification": 2}}],
    )
    request = decode_infer_request(body, model_name="m", model_version="3")
    assert request.id == "abc"
    assert request.model_version == "3"
    assert request.parameters == {"binary_data_output": False, "priority": 1}
    assert request.outputs == [RequestedOutput("y"), RequestedOutput("z", {"classification": 2})]
    assert request.inputs[0].parameters == {"note": "kept"}


BAD_JSON = [
    pytest.param(b"{not json", "malformed JSON", id="malformed"),
    pytest.param(b"[1, 2]", "must be a JSON object", id="not-object"),
    pytest.param(b'{"inputs": {}}', "Unable to parse 'inputs'", id="inputs-object"),
    pytest.param(b'{"outputs": []}', "'inputs' must be", id="no-inputs"),
    pytest.param(json_request(fp32(), id=5), "'id' must be a string", id="id-number"),
    pytest.param(json_request(fp32(), parameters=[1]), "'parameters' must be", id="params-list"),
    pytest.param(
        json_request(fp32(), parameters={"a": {"b": 1}}), "parameter 'a' must be", id="param-obj"
    ),
    pytest.param(
        json_request(fp32(), parameters={"binary_data_output": 1}),
        "'binary_data_output' must be a boolean",
        id="binary-output-int",
    ),
    pytest.param(json_request(5), r"inputs\[0\] must be a JSON object", id="input-not-obj"),
    pytest.param(json_request(fp32(name=3)), "'name' must be a string", id="name-number"),
    pytest.param(json_request(fp32(), fp32()), "'x' appears more than once", id="duplicate"),
    pytest.param(
        json_request({**fp32(), "datatype": "FLOAT"}),
        "unknown datatype 'FLOAT'.*FP32.*BYTES",
        id="unknown-datatype",
    ),
    pytest.param(
        json_request({**fp32(), "datatype": "TYPE_FP32"}),
        "unknown datatype 'TYPE_FP32'",
        id="config-datatype-name",
    ),
    pytest.param(json_request(fp32(shape=[1, -1])), "'shape' must be", id="negative-dim"),
    pytest.param(json_request(fp32(shape=[1, 2.0])), "'shape' must be", id="float-dim"),
    pytest.param(json_request(fp32(shape=[True, 2])), "'shape' must be", id="bool-dim"),
    pytest.param(json_request(fp32(shape="1,2")), "'shape' must be", id="shape-string"),
    pytest.param(
        json_request({"name": "x", "datatype": "FP32", "shape": [1]}), "has no 'data'", id="no-data"
    ),
    pytest.param(json_request(fp32(data=5.0, shape=[1])), "must be a JSON array", id="scalar"),
    pytest.param(
        json_request(fp32(shape=[2, 2], data=[1, 2, 3])),
        r"^Unable to parse 'data': Shape does not match true shape of 'data' field$",
        id="count",
    ),
    pytest.param(json_request(fp32(shape=[3], data=[[1, 2], [3]])), "ragged", id="ragged-length"),
    pytest.param(json_request(fp32(shape=[3], data=[1, [2, 3]])), "ragged", id="ragged-depth"),
    pytest.param(json_request(fp32(shape=[3], data=[[1], 2, 3])), "ragged", id="ragged-first"),
    pytest.param(
        json_request(fp32(data=[1.0, True])), "booleans are not valid in a FP32", id="bool-fp32"
    ),
    pytest.param(
        json_request(fp32(data=[1.0, "2"])), "strings are not valid in a FP32", id="str-fp32"
    ),
    pytest.param(json_request(fp32(data=[1.0, None])), "nulls are not valid", id="null-fp32"),
    pytest.param(json_request(fp32(data=[1.0, {}])), "objects are not valid", id="object-fp32"),
    pytest.param(
        json_request(fp32(shape=[1], data=[1e39])), "out of range for FP32", id="fp32-overflow"
    ),
    pytest.param(
        json_request({"name": "h", "datatype": "FP16", "shape": [1], "data": [70000.0]}),
        "out of range for FP16",
        id="fp16-overflow",
    ),
    pytest.param(
        json_request({"name": "h", "datatype": "BF16", "shape": [1], "data": [3.4e38]}),
        "out of range for BF16",
        id="bf16-overflow",
    ),
    pytest.param(
        json_request({"name": "i", "datatype": "INT8", "shape": [2], "data": [1, 300]}),
        r"value 300 is out of range for INT8 \[-128, 127\]",
        id="int8-overflow",
    ),
    pytest.param(
        json_request({"name": "i", "datatype": "UINT32", "shape": [2], "data": [1, -1]}),
        "value -1 is out of range for UINT32",
        id="uint-negative",
    ),
    pytest.param(
        json_request({"name": "i", "datatype": "INT64", "shape": [1], "data": [2**63]}),
        "out of range for INT64",
        id="int64-overflow",
    ),
    pytest.param(
        b'{"inputs":[{"name":"i","datatype":"UINT64","shape":[1],"data":[18446744073709551616]}]}',
        "value 18446744073709551616 is out of range for UINT64",
        id="uint64-overflow",
    ),
    pytest.param(
        json_request({"name": "i", "datatype": "INT32", "shape": [2], "data": [1, 2.5]}),
        "2.5 is not an integer, as INT32 needs",
        id="fraction-int",
    ),
    pytest.param(
        json_request({"name": "i", "datatype": "INT32", "shape": [1], "data": [True]}),
        "booleans are not valid in a INT32",
        id="bool-int",
    ),
    pytest.param(
        json_request({"name": "i", "datatype": "UINT8", "shape": [1], "data": ["7"]}),
        "strings are not valid in a UINT8",
        id="str-int",
    ),
    pytest.param(
        b'{"inputs":[{"name":"i","datatype":"INT32","shape":[1],"data":[NaN]}]}',
        "nan is not an integer",
        id="nan-int",
    ),
    pytest.param(
        b'{"inputs":[{"name":"i","datatype":"INT32","shape":[1],"data":[-Infinity]}]}',
        "-inf is not an integer",
        id="inf-int",
    ),
    pytest.param(
        json_request({"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, 1]}),
        r"numbers are not valid in a BOOL tensor \(use true/false\)",
        id="number-bool",
    ),
    pytest.param(
        json_request({"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", 1]}),
        "numbers are not valid in a BYTES tensor",
        id="number-bytes",
    ),
    pytest.param(
        b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[1],"data":["\\ud800"]}]}',
        "not valid UTF-8",
        id="lone-surrogate",
    ),
    pytest.param(
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1e999]}]}',
        "malformed JSON",
        id="json-number-too-big",
    ),
    pytest.param(json_request(fp32(), outputs={"name": "y"}), "'outputs' must be", id="outs-obj"),
    pytest.param(json_request(fp32(), outputs=["y"]), r"outputs\[0\] must be", id="out-str"),
    pytest.param(json_request(fp32(), outputs=[{}]), "'name' must be a string", id="out-no-name"),
    pytest.param(
        json_request(fp32(), outputs=[{"name": "y"}, {"name": "y"}]),
        "output 'y' is requested more than once",
        id="out-duplicate",
    ),
    pytest.param(
        json_request(fp32(), outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
        "'binary_data' must be a boolean",
        id="out-binary-str",
    ),
    pytest.param(
        json_request(fp32(), outputs=[{"name": "y", "parameters": {"classification": -1}}]),
        "'classification' must be a non-negative integer",
        id="out-classification",
    ),
    pytest.param(
        json_request(fp32(parameters={"binary_data_size": 8})),
        "declares binary_data_size but the request has no binary data",
        id="binary-without-header",
    ),
]


@pytest.mark.parametrize(("body", "match"), BAD_JSON)
def test_bad_json_requests_are_invalid_arguments(body: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        decode(body)


@pytest.mark.parametrize(
    "body",
    [
        json_request(fp32(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 8})),
        json_request(fp32(), outputs=[{"name": "y", "parameters": {"shared_memory_region": "r"}}]),
    ],
    ids=["input", "output"],
)
def test_shared_memory_is_refused_without_leases(body: bytes) -> None:
    # No leases: the server does not allow client shared memory (see test_codec_shm.py).
    with pytest.raises(PermissionDenied, match="Client shared memory is disabled"):
        decode(body)


def test_shared_memory_from_tritonclient_is_refused_without_leases() -> None:
    item = httpclient.InferInput("x", [1, 4], "FP32")
    item.set_shared_memory("region0", 16)
    body, size = httpclient.InferenceServerClient.generate_request_body([item])
    with pytest.raises(PermissionDenied, match="--allow-client-shm"):
        decode(body, size)


# -- binary framing ---------------------------------------------------------------------------


def binary_body() -> tuple[bytes, int, np.ndarray, np.ndarray]:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    body, size = triton_body({"a": (DataType.FP32, a), "b": (DataType.INT64, b)}, binary=True)
    assert size is not None
    return body, size, a, b


def test_binary_blobs_are_read_only_views() -> None:
    body, size, a, _ = binary_body()
    data = decode(body, size).inputs[0].data
    assert np.array_equal(data, a)
    assert not data.flags.writeable


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda body, n: (body, -1), "Inference-Header-Content-Length is -1 but the body has"),
        (lambda body, n: (body, len(body) + 1), r"is \d+ but the body has \d+ bytes"),
        (lambda body, n: (body[:-1], n), "input 'b': binary_data_size is 32 bytes but only 31"),
        (lambda body, n: (body + b"\0\0", n), "2 unexpected trailing byte.* after .* input 'b'"),
        (lambda body, n: (body, n - 1), "malformed JSON"),
    ],
    ids=["negative", "too-long", "truncated", "trailing", "header-cut"],
)
def test_bad_binary_framing(mangle, match: str) -> None:  # type: ignore[no-untyped-def]
    body, size, _, _ = binary_body()
    bad_body, bad_size = mangle(body, size)
    with pytest.raises(InvalidArgument, match=match):
        decode(bad_body, bad_size)


def test_trailing_bytes_after_an_all_json_header() -> None:
    header = json_request(fp32())
    with pytest.raises(InvalidArgument, match="1 unexpected trailing byte"):
        decode(header + b"x", len(header))


def test_blob_size_must_match_shape_and_datatype() -> None:
    header = json_request(
        {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}
    )
    with pytest.raises(
        InvalidArgument, match=r"'x': binary_data_size is 4 bytes but shape \[2\] of FP32 needs 8"
    ):
        decode(header + b"\0" * 4, len(header))


def test_binary_with_data_too_is_invalid() -> None:
    header = json_request(fp32(parameters={"binary_data_size": 8}))
    with pytest.raises(InvalidArgument, match="both 'data' and binary_data_size"):
        decode(header + b"\0" * 8, len(header))


# -- raw binary requests (Inference-Header-Content-Length: 0) ---------------------------------


def config(*inputs: TensorSpec, max_batch_size: int = 0) -> ModelConfig:
    return ModelConfig(name="m", max_batch_size=max_batch_size, inputs=inputs)


def test_raw_request_with_batching_gets_batch_one() -> None:
    array = np.arange(12, dtype=np.float32)
    cfg = config(TensorSpec("x", DataType.FP32, (-1, 4)), max_batch_size=8)

    request = decode(array.tobytes(), 0, config=cfg)

    (tensor,) = request.inputs
    assert tensor.name == "x"
    assert tensor.data.shape == (1, 3, 4)
    assert np.array_equal(tensor.data.reshape(-1), array)
    assert request.parameters == {"binary_data_output": True}
    assert request.outputs is None


def test_raw_request_fixed_shape_without_batching() -> None:
    cfg = config(TensorSpec("x", DataType.INT16, (2, 2)))
    tensor = decode(np.arange(4, dtype=np.int16).tobytes(), 0, config=cfg).inputs[0]
    assert tensor.data.shape == (2, 2)
    assert tensor.data.dtype == np.int16


def test_raw_request_bytes_input_is_one_element() -> None:
    cfg = config(TensorSpec("img", DataType.BYTES, (1,)), max_batch_size=4)
    tensor = decode(b"\x89PNG raw file", 0, config=cfg).inputs[0]
    assert tensor.data.shape == (1, 1)
    assert tensor.data[0, 0] == b"\x89PNG raw file"


@pytest.mark.parametrize(
    ("cfg", "body", "match"),
    [
        (None, b"1234", "needs the model's configuration"),
        (
            config(TensorSpec("a", DataType.FP32, (1,)), TensorSpec("b", DataType.FP32, (1,))),
            b"1234",
            "exactly one input; model 'm' has 2",
        ),
        (config(TensorSpec("x", DataType.FP32, (-1, -1))), b"1234", "more than one variable"),
        (config(TensorSpec("x", DataType.FP32, (-1, 2))), b"123456789012", "whole number"),
        (config(TensorSpec("x", DataType.FP32, (2,))), b"1234", "needs 8 bytes, the body has 4"),
        (config(TensorSpec("s", DataType.BYTES, (2,))), b"ab", r"must have shape \[1\]"),
        (config(TensorSpec("s", DataType.BYTES, (-1,))), b"ab", r"must have shape \[1\]"),
        (config(TensorSpec("b", DataType.BOOL, (2,))), b"\x01\x02", "must be 0 or 1"),
    ],
    ids=[
        "no-config",
        "two-inputs",
        "two-variable",
        "ragged-size",
        "size",
        "bytes-2",
        "bytes-var",
        "bool-byte",
    ],
)
def test_bad_raw_requests(cfg: ModelConfig | None, body: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        decode(body, 0, config=cfg)


# -- responses read by tritonclient -----------------------------------------------------------


def respond(
    *tensors: Tensor,
    request: InferRequest | None = None,
    id: str = "",
    parameters: dict | None = None,
) -> tuple[bytes, int | None, httpclient.InferResult]:
    request = request or InferRequest("m", [])
    response = InferResponse("m", "1", list(tensors), id=id, parameters=parameters or {})
    body, header_length = encode_infer_response(response, request)
    result = httpclient.InferResult.from_response_body(body, False, header_length)
    return body, header_length, result


def wants(binary: bool | None, *names: str) -> InferRequest:
    parameters = {} if binary is None else {"binary_data": binary}
    return InferRequest("m", [], outputs=[RequestedOutput(n, dict(parameters)) for n in names])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", ALL_TYPES, ids=lambda t: t.value)
def test_every_datatype_reaches_tritonclient(datatype: DataType, binary: bool) -> None:
    array = sample(datatype, (2, 5))

    body, header_length, result = respond(
        Tensor("out", datatype, array), request=wants(binary, "out")
    )

    got = result.as_numpy("out")
    assert got.shape == array.shape
    assert (header_length is not None) is binary
    output = result.get_output("out")
    if binary:
        assert output["parameters"] == {"binary_data_size": len(body) - header_length}
        assert "data" not in output
    else:
        assert "parameters" not in output
    if datatype is DataType.BF16:
        assert np.array_equal(got.view(np.uint16), array)
    elif datatype is DataType.BYTES:
        # tritonclient gives bytes for binary BYTES and str for JSON BYTES.
        expected = list(array.reshape(-1))
        if not binary:
            expected = [item.decode() for item in expected]
        assert list(got.reshape(-1)) == expected
    else:
        assert got.dtype == datatype.numpy
        assert np.array_equal(got, array)


def test_response_document_shape() -> None:
    body, header_length, _ = respond(
        Tensor("y", DataType.FP32, np.array([[0.5, 0.25]], dtype=np.float32)),
        id="req-7",
        parameters={"sequence_end": True},
    )
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "req-7",
        "parameters": {"sequence_end": True},
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.25]}],
    }


def test_response_omits_empty_id_and_parameters_and_echoes_request_id() -> None:
    tensor = Tensor("y", DataType.INT32, np.array([1], dtype=np.int32))
    body, _, _ = respond(tensor)
    assert set(orjson.loads(body)) == {"model_name", "model_version", "outputs"}
    body, _, _ = respond(tensor, request=InferRequest("m", [], id="from-request"))
    assert orjson.loads(body)["id"] == "from-request"


def test_listed_output_without_binary_data_is_json_despite_binary_data_output() -> None:
    """Triton's HTTP server: an output the request lists takes its own ``binary_data``
    (false when absent); ``binary_data_output`` only covers outputs the request does not list."""
    request = InferRequest(
        "m",
        [],
        outputs=[RequestedOutput("a"), RequestedOutput("b", {"binary_data": True})],
        parameters={"binary_data_output": True},
    )
    a = np.arange(3, dtype=np.int64)
    b = np.arange(2, dtype=np.float64)

    _, header_length, result = respond(
        Tensor("a", DataType.INT64, a), Tensor("b", DataType.FP64, b), request=request
    )

    assert header_length is not None
    assert result.get_output("a")["data"] == [0, 1, 2]
    assert "parameters" not in result.get_output("a")
    # perf_analyzer's JSON mode reads binary outputs by binary_data_size alone.
    assert result.get_output("b")["parameters"] == {"binary_data_size": 16}
    assert "data" not in result.get_output("b")
    assert np.array_equal(result.as_numpy("b"), b)


def test_binary_data_output_covers_unlisted_outputs() -> None:
    request = InferRequest("m", [], parameters={"binary_data_output": True})
    a = np.arange(3, dtype=np.int64)
    _, header_length, result = respond(Tensor("a", DataType.INT64, a), request=request)
    assert header_length is not None
    assert result.get_output("a")["parameters"] == {"binary_data_size": 24}
    assert np.array_equal(result.as_numpy("a"), a)


def test_empty_inputs_decode() -> None:
    """An empty 'inputs' array is valid JSON for Triton (a model whose inputs are all optional
    runs); the engine decides whether the model needs any."""
    request = decode_infer_request(b'{"inputs": []}', model_name="m")
    assert request.inputs == []


def test_blobs_follow_the_header_in_output_order() -> None:
    tensors = [
        Tensor("t0", DataType.UINT8, np.arange(3, dtype=np.uint8)),
        Tensor("t1", DataType.FP32, np.ones((2, 2), dtype=np.float32)),
        Tensor("t2", DataType.BYTES, sample(DataType.BYTES, (2,))),
        Tensor("t3", DataType.BOOL, np.array([True, False])),
    ]
    request = InferRequest("m", [], parameters={"binary_data_output": True})
    _, _, result = respond(*tensors, request=request)
    for tensor in tensors:
        assert list(result.as_numpy(tensor.name).reshape(-1)) == list(tensor.data.reshape(-1))


def test_output_parameters_are_kept_beside_binary_data_size() -> None:
    tensor = Tensor("y", DataType.INT8, np.array([1], dtype=np.int8), {"note": "x"})
    _, _, result = respond(tensor, request=wants(True, "y"))
    assert result.get_output("y")["parameters"] == {"note": "x", "binary_data_size": 1}


@pytest.mark.parametrize("datatype", [DataType.FP16, DataType.FP32, DataType.FP64])
def test_non_finite_floats_reach_tritonclient(datatype: DataType) -> None:
    array = np.array([np.nan, np.inf, -np.inf, 0.1], dtype=datatype.numpy)
    body, _, result = respond(Tensor("y", datatype, array), request=wants(False, "y"))
    assert b"Infinity" in body
    assert np.array_equal(result.as_numpy("y"), array, equal_nan=True)


def test_non_contiguous_output() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]
    for binary in (False, True):
        _, _, result = respond(Tensor("y", DataType.INT32, array), request=wants(binary, "y"))
        assert np.array_equal(result.as_numpy("y"), array)


def test_bytes_that_are_not_utf8_need_binary() -> None:
    array = np.array([b"\xff\xfe"], dtype=object)
    with pytest.raises(InvalidArgument, match="binary_data=true"):
        respond(Tensor("y", DataType.BYTES, array), request=wants(False, "y"))
    _, _, result = respond(Tensor("y", DataType.BYTES, array), request=wants(True, "y"))
    assert result.as_numpy("y")[0] == b"\xff\xfe"


def test_output_dtype_must_match_its_datatype() -> None:
    tensor = Tensor("y", DataType.FP32, np.zeros(2, dtype=np.float64))
    with pytest.raises(InternalError, match="declared FP32 but the model produced float64"):
        respond(tensor)


def test_decoded_request_round_trips_through_the_encoder() -> None:
    # What the server does: decode, run (identity here), encode as the client asked.
    array = sample(DataType.FP32, (1, 64))
    outputs = [httpclient.InferRequestedOutput("x", binary_data=False)]
    body, size = triton_body({"x": (DataType.FP32, array)}, binary=True, outputs=outputs)
    request = decode(body, size)
    response = InferResponse("m", "1", request.inputs)
    out_body, header_length = encode_infer_response(response, request)
    result = httpclient.InferResult.from_response_body(out_body, False, header_length)
    assert header_length is None
    assert np.array_equal(result.as_numpy("x"), array)


def test_encode_error() -> None:
    assert orjson.loads(encode_error('bad "input" ✓')) == {"error": 'bad "input" ✓'}
