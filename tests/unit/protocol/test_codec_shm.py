"""Shared-memory tensors in the HTTP codec and app, with bodies written by tritonclient."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from test_codec import ALL_TYPES, client_array, sample
from test_http_app import error, ok_json, with_app

from forwardpass.datatypes import DataType, serialize_bytes_tensor
from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.protocol.codec import decode_infer_request, encode_infer_response
from forwardpass.protocol.http import EXTENSIONS, SHM_EXTENSION
from forwardpass.protocol.shared_memory import SharedMemoryRegistry
from forwardpass.types import InferResponse, Tensor

SIZE = 1 << 16


@pytest.fixture
def region() -> Iterator[tuple[SharedMemoryRegistry, Path]]:
    """Region "r": all of a 64 KiB object in /dev/shm, registered."""
    name = f"fp_codec_{uuid.uuid4().hex[:12]}"
    path = Path("/dev/shm") / name
    path.write_bytes(bytes(SIZE))
    registry = SharedMemoryRegistry()
    registry.register("r", "/" + name, 0, SIZE)
    try:
        yield registry, path
    finally:
        registry.unregister()
        path.unlink(missing_ok=True)


def put(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def blob(datatype: DataType, array: np.ndarray) -> bytes:
    return serialize_bytes_tensor(array) if datatype is DataType.BYTES else array.tobytes()


@pytest.mark.parametrize("datatype", ALL_TYPES, ids=lambda t: t.value)
def test_every_datatype_round_trips_through_shared_memory(
    datatype: DataType, region: tuple[SharedMemoryRegistry, Path]
) -> None:
    registry, path = region
    array = sample(datatype)
    data = blob(datatype, array)
    put(path, 100, data)
    item = httpclient.InferInput("x", list(array.shape), datatype.value)
    item.set_shared_memory("r", len(data), offset=100)
    out = httpclient.InferRequestedOutput("y")
    out.set_shared_memory("r", 4096, offset=8192)
    body, size = httpclient.InferenceServerClient.generate_request_body([item], outputs=[out])
    with registry.leases() as leases:
        request = decode_infer_request(
            body, model_name="m", header_length=size, shared_memory=leases
        )
        [tensor] = request.inputs
        assert tensor.parameters == {}  # consumed, like binary_data_size
        if datatype is DataType.BYTES:
            assert list(tensor.data.reshape(-1)) == list(array.reshape(-1))
        else:
            np.testing.assert_array_equal(tensor.data, array)
        assert request.outputs is not None
        response = InferResponse("m", "1", [Tensor("y", datatype, tensor.data, {})])
        header, json_length = encode_infer_response(response, request, leases)
    assert json_length is None  # no blob in the body: the output went to shared memory
    entry = orjson.loads(header)["outputs"][0]
    # As Triton's HTTP server: no data and no parameters for an output in shared memory.
    assert entry == {"name": "y", "datatype": datatype.value, "shape": list(array.shape)}
    assert path.read_bytes()[8192 : 8192 + len(data)] == data
    # tritonclient reads such a response; the output's data is read from the region instead.
    result = httpclient.InferResult.from_response_body(header, False, None)
    assert client_array(datatype, array).shape == tuple(result.get_output("y")["shape"])


def test_shared_and_inline_tensors_mix(region: tuple[SharedMemoryRegistry, Path]) -> None:
    registry, path = region
    a = np.arange(4, dtype=np.float32)
    put(path, 0, a.tobytes())
    shared = httpclient.InferInput("a", [4], "FP32").set_shared_memory("r", 16)
    inline = httpclient.InferInput("b", [4], "FP32")
    inline.set_data_from_numpy(a * 10, binary_data=True)
    body, size = httpclient.InferenceServerClient.generate_request_body([shared, inline])
    with registry.leases() as leases:
        request = decode_infer_request(
            body, model_name="m", header_length=size, shared_memory=leases
        )
        np.testing.assert_array_equal(request.inputs[0].data, a)
        np.testing.assert_array_equal(request.inputs[1].data, a * 10)


def shm_input(**parameters: object) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": [2], "parameters": parameters}


@pytest.mark.parametrize(
    ("raw", "error_type", "match"),
    [
        (
            {**shm_input(shared_memory_region="r", shared_memory_byte_size=8), "data": [1, 2]},
            InvalidArgument,
            "both data and shared memory",
        ),
        (
            shm_input(shared_memory_region="r"),
            InvalidArgument,
            "needs both 'shared_memory_region' and 'shared_memory_byte_size'",
        ),
        (
            shm_input(shared_memory_byte_size=8),
            InvalidArgument,
            "needs both",
        ),
        (
            shm_input(shared_memory_region=3, shared_memory_byte_size=8),
            InvalidArgument,
            "'shared_memory_region' must be a non-empty string",
        ),
        (
            shm_input(shared_memory_region="r", shared_memory_byte_size=-8),
            InvalidArgument,
            "'shared_memory_byte_size' must be an integer from 0",
        ),
        (
            shm_input(shared_memory_region="r", shared_memory_byte_size=8.0),
            InvalidArgument,
            "'shared_memory_byte_size' must be an integer",
        ),
        (
            shm_input(
                shared_memory_region="r", shared_memory_byte_size=8, shared_memory_offset=True
            ),
            InvalidArgument,
            "'shared_memory_offset' must be an integer",
        ),
        (
            shm_input(
                shared_memory_region="r",
                shared_memory_byte_size=8,
                shared_memory_offset=18446744073709551615,
            ),
            InvalidArgument,
            "'shared_memory_offset' must be an integer from 0",
        ),
        (
            shm_input(
                shared_memory_region="r",
                shared_memory_byte_size=2**63 - 1,
                shared_memory_offset=8,
            ),
            InvalidArgument,
            "Invalid offset \\+ byte size for shared memory region: 'r'",
        ),
        (
            shm_input(
                shared_memory_region="r", shared_memory_byte_size=8, shared_memory_offset=SIZE
            ),
            InvalidArgument,
            "Invalid offset for shared memory region: 'r'",
        ),
        (
            shm_input(shared_memory_region="r", shared_memory_byte_size=12),
            InvalidArgument,
            r"is 12 bytes but shape \[2\] of FP32 needs 8",
        ),
        (
            shm_input(shared_memory_region="ghost", shared_memory_byte_size=8),
            NotFound,
            "Unable to find shared memory region: 'ghost'",
        ),
    ],
)
def test_bad_shared_memory_inputs(
    region: tuple[SharedMemoryRegistry, Path],
    raw: dict,
    error_type: type[Exception],
    match: str,
) -> None:
    registry, _ = region
    body = orjson.dumps({"inputs": [raw]})
    with registry.leases() as leases, pytest.raises(error_type, match=match):
        decode_infer_request(body, model_name="m", shared_memory=leases)


@pytest.mark.parametrize(
    ("parameters", "error_type", "match"),
    [
        ({"shared_memory_region": "ghost", "shared_memory_byte_size": 8}, NotFound, "'ghost'"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": -1},
            InvalidArgument,
            "'shared_memory_offset' must be an integer from 0",
        ),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": SIZE + 1},
            InvalidArgument,
            "Invalid offset \\+ byte size",
        ),
        ({"shared_memory_region": "r"}, InvalidArgument, "needs both"),
    ],
)
def test_bad_shared_memory_outputs_fail_before_inference(
    region: tuple[SharedMemoryRegistry, Path],
    parameters: dict,
    error_type: type[Exception],
    match: str,
) -> None:
    registry, _ = region
    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "y", "parameters": parameters}],
        }
    )
    with registry.leases() as leases, pytest.raises(error_type, match=match):
        decode_infer_request(body, model_name="m", shared_memory=leases)


def test_an_output_that_does_not_fit(region: tuple[SharedMemoryRegistry, Path]) -> None:
    registry, _ = region
    out = httpclient.InferRequestedOutput("y")
    out.set_shared_memory("r", 8)
    item = httpclient.InferInput("x", [1], "FP32")
    item.set_data_from_numpy(np.ones(1, np.float32))
    body, size = httpclient.InferenceServerClient.generate_request_body([item], outputs=[out])
    with registry.leases() as leases:
        request = decode_infer_request(
            body, model_name="m", header_length=size, shared_memory=leases
        )
        response = InferResponse("m", "1", [Tensor("y", DataType.FP32, np.ones(3, np.float32))])
        with pytest.raises(InvalidArgument, match=r"\(8 bytes\) should be at least 12 bytes"):
            encode_infer_response(response, request, leases)


# -- the HTTP app -----------------------------------------------------------------------------


def test_http_routes_when_allowed(repo: Path, region: tuple[SharedMemoryRegistry, Path]) -> None:
    registry, path = region
    key = "/" + path.name
    base = "/v2/systemsharedmemory"

    async def body(call, engine) -> None:  # type: ignore[no-untyped-def]
        metadata = ok_json(await call("GET", "/v2"))
        assert metadata["extensions"] == [*EXTENSIONS, SHM_EXTENSION]
        assert ok_json(await call("GET", f"{base}/status")) == [
            {"name": "r", "key": key, "offset": 0, "byte_size": SIZE}
        ]
        register = {"key": key, "offset": 16, "byte_size": 64}
        assert (await call("POST", f"{base}/region/in%20put/register", register)).status == 200
        assert ok_json(await call("GET", f"{base}/region/in%20put/status")) == [
            {"name": "in put", "key": key, "offset": 16, "byte_size": 64}
        ]
        error(
            await call("POST", f"{base}/region/in%20put/register", register),
            400,
            "shared memory region 'in put' already in manager",
        )
        error(
            await call("POST", f"{base}/region/z/register", {"key": "/fp_none", "byte_size": 4}),
            400,
            "Unable to open shared memory region: '/fp_none'",
        )
        error(
            await call("POST", f"{base}/region/z/register", {"key": key, "byte_size": SIZE + 1}),
            400,
            "failed to register shared memory region 'z'",
        )
        error(
            await call("POST", f"{base}/region/z/register", {"key": key, "byte_size": "4"}),
            400,
            "'byte_size' must be a non-negative integer",
        )
        error(await call("POST", f"{base}/region/z/register", b"[1]"), 400, "JSON object")
        error(await call("GET", f"{base}/region/z/status"), 404, "'z'")
        error(await call("GET", f"{base}/region/z/register"), 400, "use POST")
        error(await call("POST", f"{base}/register"), 404, "no route")
        assert (await call("POST", f"{base}/region/in%20put/unregister")).status == 200
        assert [r["name"] for r in ok_json(await call("GET", f"{base}/status"))] == ["r"]
        assert (await call("POST", f"{base}/unregister")).status == 200
        assert ok_json(await call("GET", f"{base}/status")) == []
        error(await call("GET", "/v2/cudasharedmemory/status"), 501, "CUDA shared memory")

    with_app(repo, body, shared_memory=registry)


def test_http_routes_refuse_when_not_allowed(repo: Path) -> None:
    async def body(call, engine) -> None:  # type: ignore[no-untyped-def]
        metadata = ok_json(await call("GET", "/v2"))
        assert SHM_EXTENSION not in metadata["extensions"]
        for method, path in [
            ("GET", "/v2/systemsharedmemory/status"),
            ("GET", "/v2/systemsharedmemory/region/r/status"),
            ("POST", "/v2/systemsharedmemory/region/r/register"),
            ("POST", "/v2/systemsharedmemory/region/r/unregister"),
            ("POST", "/v2/systemsharedmemory/unregister"),
        ]:
            error(
                await call(method, path, {"key": "/k", "byte_size": 4}), 403, "--allow-client-shm"
            )
        error(await call("POST", "/v2/cudasharedmemory/region/r/register"), 501, "CUDA")

    with_app(repo, body)
