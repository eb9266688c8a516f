"""Property-based fuzzing of the request codec: any body decodes to consistent tensors or fails
with an error of the tree, quickly and without allocating what the body does not hold.

Plain regression tests for what the fuzzing found sit at the end of the module.
"""

from __future__ import annotations

import json
import math
import struct
import time
import tracemalloc
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from forwardpass.datatypes import DataType
from forwardpass.errors import ForwardpassError, InvalidArgument
from forwardpass.protocol.codec import decode_infer_request, encode_infer_response
from forwardpass.types import InferRequest, InferResponse, RequestedOutput, Tensor

FUZZ = settings(
    max_examples=300,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Seconds one decode may take: bodies here are at most a few kilobytes.
TIME_BOUND_S = 1.0
TYPE_NAMES = [t.value for t in DataType]


# -- strategies -------------------------------------------------------------------------------

HUGE_DIMS = st.sampled_from([10**6, 10**12, 2**31, 2**32, 2**62, 2**63 - 1, 2**64, 10**30])
DIMS = st.one_of(
    st.integers(0, 4), st.integers(-3, -1), HUGE_DIMS, st.floats(), st.text(max_size=2)
)
SHAPES = st.one_of(
    st.lists(st.integers(0, 4), max_size=4),
    st.lists(DIMS, max_size=5),
    st.lists(st.integers(0, 2), min_size=30, max_size=80),  # more dims than NumPy takes
    st.lists(st.one_of(st.just(0), HUGE_DIMS), min_size=2, max_size=4),  # zero times huge
    st.none(),
    st.integers(),
    st.text(max_size=3),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-300, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["\ud800", "é✓", "\x00", ""]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)
DATA = st.one_of(
    st.just([]),
    st.lists(SCALARS, max_size=8),
    st.lists(st.lists(st.integers(-5, 300), min_size=2, max_size=2), max_size=4),
    st.lists(st.lists(st.floats(), max_size=3), max_size=3),
    st.recursive(st.lists(SCALARS, max_size=3), lambda inner: st.lists(inner, max_size=3)),
    JSON_VALUES,
)
PARAMETERS = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["binary_data_size", "x", "shared_memory_region"]), SCALARS),
    JSON_VALUES,
)


@st.composite
def v2_inputs(draw: st.DrawFn) -> Any:
    """One ``$request_input``, usually well-formed in most fields but not all."""
    item: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        item["name"] = draw(st.one_of(st.sampled_from(["x", "y", "é"]), st.text(max_size=5)))
    else:
        item["name"] = draw(JSON_VALUES)
    item["datatype"] = draw(
        st.one_of(st.sampled_from(TYPE_NAMES), st.sampled_from(["fp32", "TYPE_FP32", ""]))
        if draw(st.integers(0, 9))
        else JSON_VALUES
    )
    item["shape"] = draw(SHAPES)
    if draw(st.integers(0, 9)):
        item["data"] = draw(DATA)
    parameters = draw(PARAMETERS)
    if parameters is not None:
        item["parameters"] = parameters
    return item if draw(st.integers(0, 19)) else draw(JSON_VALUES)


@st.composite
def v2_documents(draw: st.DrawFn) -> Any:
    document: dict[str, Any] = {}
    if draw(st.integers(0, 19)):
        document["inputs"] = draw(st.lists(v2_inputs(), max_size=3))
    else:
        document["inputs"] = draw(JSON_VALUES)
    if draw(st.booleans()):
        document["id"] = draw(st.one_of(st.text(max_size=4), JSON_VALUES))
    if draw(st.booleans()):
        document["parameters"] = draw(PARAMETERS)
    if draw(st.booleans()):
        document["outputs"] = draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.one_of(st.text(max_size=3), SCALARS)},
                        optional={"parameters": PARAMETERS},
                    ),
                    max_size=3,
                ),
                JSON_VALUES,
            )
        )
    return document if draw(st.integers(0, 19)) else draw(JSON_VALUES)


def dumps(document: Any, ascii_only: bool) -> bytes:
    # The standard library writes NaN, Infinity and huge integers, as tritonclient may.
    return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# -- the property -----------------------------------------------------------------------------


def check_decode(body: bytes, header_length: int | None = None) -> InferRequest | None:
    """Decode; a result must be consistent with its header, an error must be ours."""
    start = time.perf_counter()
    try:
        request = decode_infer_request(body, model_name="m", header_length=header_length)
    except ForwardpassError as exc:
        assert exc.message
        request = None
    # Anything else propagates and fails the example.
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BOUND_S, f"decode took {elapsed:.2f}s"
    if request is None:
        return None
    header = body if header_length is None else body[:header_length]
    document = json.loads(header.decode("utf-8", "surrogatepass"))
    declared = {item["name"]: item for item in document["inputs"]}
    assert [t.name for t in request.inputs] == [item["name"] for item in document["inputs"]]
    held = 0
    for tensor in request.inputs:
        item = declared[tensor.name]
        assert isinstance(tensor.data, np.ndarray)
        assert tensor.datatype.value == item["datatype"]
        assert tensor.data.shape == tuple(item["shape"])
        if tensor.datatype is DataType.BYTES:
            assert tensor.data.dtype == object
            assert all(type(v) is bytes for v in tensor.data.reshape(-1).tolist())
        else:
            assert tensor.data.dtype == tensor.datatype.numpy
        held += tensor.data.nbytes
    # Every element costs the body at least a byte or two, so nothing decodes to much more
    # memory than the body's size (zero-size tensors with huge dims hold nothing).
    assert held <= 8 * len(body) + 64
    return request


@FUZZ
@given(v2_documents(), st.booleans())
def test_fuzz_json_documents(document: Any, ascii_only: bool) -> None:
    check_decode(dumps(document, ascii_only))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    check_decode(body)


TOKENS = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-0",
        "1.5",
        "18446744073709551616",
        '"\\ud800"',
        '"\\udc00\\ud800"',
        '"inputs"',
        '"name"',
        '"datatype"',
        '"FP32"',
        '"BYTES"',
        '"shape"',
        '"data"',
        '"parameters"',
        '"id"',
        "true",
        "null",
        " ",
        "\u00e9",
    ]
)


@FUZZ
@given(
    st.lists(st.tuples(TOKENS, st.sampled_from([1, 1, 1, 2, 65, 1025, 3000])), max_size=12),
)
def test_fuzz_json_token_soup(runs: list[tuple[str, int]]) -> None:
    # Token runs reach what documents cannot: 3,000 nested brackets, NaN beside deep nesting
    # (the standard-library fallback), lone surrogate escapes.
    check_decode("".join(token * count for token, count in runs).encode("utf-8"))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(TYPE_NAMES),
            st.one_of(st.lists(st.integers(0, 3), max_size=3), SHAPES),
            st.one_of(st.just(0), st.integers(0, 64), st.integers(-5, -1), HUGE_DIMS, SCALARS),
            st.binary(max_size=48),
        ),
        min_size=1,
        max_size=3,
    ),
    st.binary(max_size=16),
    st.one_of(st.none(), st.integers(-3, 3), st.integers(-(2**40), 2**40)),
)
def test_fuzz_binary_extension(
    inputs: list[tuple[str, Any, Any, bytes]], trailer: bytes, length_shift: int | None
) -> None:
    document = {
        "inputs": [
            {
                "name": f"i{n}",
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
            for n, (datatype, shape, size, _) in enumerate(inputs)
        ]
    }
    header = dumps(document, True)
    body = header + b"".join(blob for *_, blob in inputs) + trailer
    # The declared header length is exact, off by a little, or absurd.
    header_length = len(header) + (length_shift or 0)
    if length_shift is not None and length_shift > 3:
        header_length = length_shift
    check_decode(body, header_length)


def blob_of(datatype: DataType, array: np.ndarray) -> bytes:
    if datatype is DataType.BYTES:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1).tolist())
    return array.tobytes()


@st.composite
def valid_tensors(draw: st.DrawFn) -> tuple[DataType, np.ndarray]:
    datatype = draw(st.sampled_from(list(DataType)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    if datatype is DataType.BYTES:
        flat = draw(
            st.lists(st.binary(max_size=5), min_size=math.prod(shape), max_size=math.prod(shape))
        )
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return datatype, array.reshape(shape)
    array = draw(hnp.arrays(datatype.numpy, shape))
    return datatype, array


@FUZZ
@given(valid_tensors())
def test_fuzz_valid_binary_requests_decode_exactly(tensor: tuple[DataType, np.ndarray]) -> None:
    datatype, array = tensor
    blob = blob_of(datatype, array)
    header = dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype.value,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        },
        True,
    )
    request = check_decode(header + blob, len(header))
    assert request is not None
    got = request.inputs[0].data
    if datatype is DataType.BYTES:
        assert got.tolist() == array.tolist()
    else:
        assert got.tobytes() == array.tobytes()


# -- round trip through tritonclient -----------------------------------------------------------


@FUZZ
@given(valid_tensors(), st.booleans())
def test_fuzz_response_round_trip(tensor: tuple[DataType, np.ndarray], binary: bool) -> None:
    datatype, array = tensor
    if datatype is DataType.BYTES and not binary:
        # JSON carries BYTES as strings, so only UTF-8 values can travel that way.
        array = (
            np.vectorize(lambda v: v.decode("utf-8", "replace").encode(), otypes=[object])(array)
            if array.size
            else array
        )
    request = InferRequest("m", [], outputs=[RequestedOutput("out", {"binary_data": binary})])
    response = InferResponse("m", "1", [Tensor("out", datatype, array)])
    body, header_length = encode_infer_response(response, request)
    result = httpclient.InferResult.from_response_body(body, False, header_length)
    got = result.as_numpy("out")
    assert got is not None
    assert got.shape == array.shape
    if datatype is DataType.BYTES:
        expected = array.reshape(-1).tolist()
        if not binary:
            expected = [v.decode() for v in expected]
        assert got.reshape(-1).tolist() == expected
    elif datatype is DataType.BF16:
        # BF16 as JSON goes out as float32 numbers; every NaN comes back as some NaN.
        back = got.view(np.uint16) if got.dtype == ml_dtypes.bfloat16 else got
        assert_same_floats(
            back.view(ml_dtypes.bfloat16).astype(np.float32),
            array.view(ml_dtypes.bfloat16).astype(np.float32),
        )
    elif datatype.is_float:
        assert got.dtype == datatype.numpy
        assert_same_floats(got, array)
    else:
        assert got.dtype == datatype.numpy
        assert np.array_equal(got, array)


def assert_same_floats(got: np.ndarray, expected: np.ndarray) -> None:
    assert np.array_equal(got, expected, equal_nan=True)
    # Signed zeros must survive too.
    assert np.array_equal(
        np.signbit(got[~np.isnan(got)]), np.signbit(expected[~np.isnan(expected)])
    )


# -- memory: a huge shape with little data is rejected before allocating ------------------------


@pytest.mark.parametrize(
    ("shape", "binary"),
    [
        ([10**12], False),
        ([10**12], True),
        ([2**62, 4], False),
        ([0, 2**62, 2**62], False),
        ([0, 2**62, 2**62], True),
        ([1] * 100, False),
        ([0, 2**62, 2**62], None),
    ],
)
@pytest.mark.parametrize("datatype", ["FP64", "BYTES"])
def test_huge_shapes_fail_before_allocating(
    shape: list[int], binary: bool | None, datatype: str
) -> None:
    item: dict[str, Any] = {"name": "x", "datatype": datatype, "shape": shape}
    if binary is None:  # no data at all, which a zero-size shape asks for
        item["data"] = []
        body, header_length = dumps({"inputs": [item]}, True), None
    elif binary:
        item["parameters"] = {"binary_data_size": 8}
        header = dumps({"inputs": [item]}, True)
        body, header_length = header + b"\x00" * 8, len(header)
    else:
        item["data"] = [1.0] if datatype == "FP64" else ["a"]
        body, header_length = dumps({"inputs": [item]}, True), None
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument):
            decode_infer_request(body, model_name="m", header_length=header_length)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a {len(body)}-byte body allocated {peak} bytes"


# -- regressions found by the fuzzing above -----------------------------------------------------


def decode_json(document: Any) -> InferRequest:
    return decode_infer_request(dumps(document, True), model_name="m")


@pytest.mark.parametrize("datatype", [[], {}, ["FP32"]])
def test_unhashable_datatype_is_invalid_argument(datatype: Any) -> None:
    # Was TypeError (unhashable type) from the datatype lookup: a 500.
    document = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [1]}]}
    with pytest.raises(InvalidArgument, match="unknown datatype"):
        decode_json(document)


@pytest.mark.parametrize("binary", [False, True])
def test_zero_size_shape_with_huge_dimensions_is_invalid_argument(binary: bool) -> None:
    # Was ValueError ("array is too big") from reshape: [0, 2**62, 2**62] holds no element,
    # so the data (empty) matched.
    item: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [0, 2**62, 2**62]}
    if binary:
        item["parameters"] = {"binary_data_size": 0}
        header = dumps({"inputs": [item]}, True)
        with pytest.raises(InvalidArgument, match=r"'shape' .* is too large"):
            decode_infer_request(header, model_name="m", header_length=len(header))
    else:
        item["data"] = []
        with pytest.raises(InvalidArgument, match=r"'shape' .* is too large"):
            decode_json({"inputs": [item]})


def test_too_many_dimensions_is_invalid_argument() -> None:
    # Was ValueError ("maximum supported dimension ... 64") from reshape.
    document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 65, "data": [1]}]}
    with pytest.raises(InvalidArgument, match="65 dimensions, at most 32"):
        decode_json(document)
    document["inputs"][0]["shape"] = [1] * 32
    assert decode_json(document).inputs[0].data.shape == (1,) * 32


@pytest.mark.parametrize("body", [b"[" * 3000 + b"NaN", b'{"inputs": ' + b"[" * 1100 + b"NaN"])
def test_deep_nesting_beside_nan_is_malformed_json(body: bytes) -> None:
    # Was RecursionError from the standard-library fallback that reads NaN and Infinity.
    with pytest.raises(InvalidArgument, match="malformed JSON"):
        decode_infer_request(body, model_name="m")


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "a\\udbffb"])
def test_lone_surrogate_beside_nan_is_malformed_json(escape: str) -> None:
    # Was accepted: the NaN fallback (json.loads) keeps lone surrogates orjson refuses, and
    # an "id" holding one made the response unencodable (a 500).
    body = (
        '{"id": "' + escape + '", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], '
        '"data": [NaN]}]}'
    ).encode()
    with pytest.raises(
        InvalidArgument, match=r"not valid UTF-8 \(it holds a lone UTF-16 surrogate"
    ):
        decode_infer_request(body, model_name="m")
    # A proper pair is text, and passes.
    pair = body.replace(escape.encode(), b"\\ud83d\\ude00")
    assert decode_infer_request(pair, model_name="m").id == "\U0001f600"


def test_integers_beside_nan_read_as_orjson_reads_them() -> None:
    # Was a Python int beyond 64 bits, which passed validation but could not be encoded back.
    big = 10**23
    body = (
        '{"parameters": {"p": ' + str(big) + ', "q": 18446744073709551615}, "inputs": [{"name": '
        '"x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}'
    ).encode()
    request = decode_infer_request(body, model_name="m")
    assert request.parameters == {"p": 1e23, "q": 2**64 - 1}
    assert type(request.parameters["p"]) is float
