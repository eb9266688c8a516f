"""System shared memory with a real server, driven by tritonclient as its users do."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from modelrepo import mlp_expected, null_config, write_model
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def shm_repository(tmp_path_factory: pytest.TempPathFactory, main_repository: Path) -> Path:
    root = tmp_path_factory.mktemp("shm") / "models"
    root.mkdir()
    for name in ("mlp", "echo_bytes"):
        (root / name).symlink_to(main_repository / name, target_is_directory=True)
    # Echoes its input after 400 ms: time to unregister a region while a request uses it.
    write_model(root, "slow_echo", config=null_config("slow_echo", dims="[ 4 ]", delay_ms=400))
    return root


@pytest.fixture(scope="module")
def shm_server(start_module_server: Any, shm_repository: Path) -> Any:
    return start_module_server(shm_repository, "--allow-client-shm", "--log-level", "WARNING")


@pytest.fixture
def client(shm_server: Any) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(shm_server.address)
    try:
        yield triton
    finally:
        triton.unregister_system_shared_memory()
        triton.close()


def test_metadata_lists_the_extension(client: httpclient.InferenceServerClient) -> None:
    extensions = client.get_server_metadata()["extensions"]
    assert "system_shared_memory" in extensions
    assert "cuda_shared_memory" not in extensions


def test_infer_through_shared_memory(client: httpclient.InferenceServerClient, region: Any) -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, -3.0]], np.float32)
    in_handle, in_key = region("input_data", x.nbytes)
    out_handle, out_key = region("output_data", 64)
    shm.set_shared_memory_region(in_handle, [x])
    client.register_system_shared_memory("input_data", in_key, x.nbytes)
    client.register_system_shared_memory("output_data", out_key, 64)

    status = client.get_system_shared_memory_status()
    assert sorted(status, key=lambda s: s["name"]) == [
        {"name": "input_data", "key": in_key, "offset": 0, "byte_size": x.nbytes},
        {"name": "output_data", "key": out_key, "offset": 0, "byte_size": 64},
    ]
    assert client.get_system_shared_memory_status("output_data") == [
        {"name": "output_data", "key": out_key, "offset": 0, "byte_size": 64}
    ]

    item = httpclient.InferInput("x", list(x.shape), "FP32")
    item.set_shared_memory("input_data", x.nbytes)
    out = httpclient.InferRequestedOutput("y", binary_data=True)
    out.set_shared_memory("output_data", 24, offset=8)
    result = client.infer("mlp", [item], outputs=[out])
    output = result.get_output("y")
    assert output["shape"] == [2, 3]
    # As Triton's HTTP server: neither data nor parameters (perf_analyzer reads
    # binary_data_size from any output that has parameters).
    assert "parameters" not in output and "data" not in output
    got = shm.get_contents_as_numpy(out_handle, np.float32, [2, 3], offset=8)
    np.testing.assert_allclose(got, mlp_expected(x), rtol=1e-6)

    # The input region is read on every request: change it, infer again.
    shm.set_shared_memory_region(in_handle, [x * 2])
    client.infer("mlp", [item], outputs=[out])
    got = shm.get_contents_as_numpy(out_handle, np.float32, [2, 3], offset=8)
    np.testing.assert_allclose(got, mlp_expected(x * 2), rtol=1e-6)

    client.unregister_system_shared_memory("input_data")
    assert [s["name"] for s in client.get_system_shared_memory_status()] == ["output_data"]
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_bytes_through_shared_memory(client: httpclient.InferenceServerClient, region: Any) -> None:
    strings = np.array([b"hello", b"", "forwardpass \u2713".encode()], dtype=object)
    serialized = httpclient.serialize_byte_tensor(strings)
    handle, key = region("strings", 1024)
    shm.set_shared_memory_region(handle, [serialized])
    client.register_system_shared_memory("strings", key, 1024)
    item = httpclient.InferInput("in", [3], "BYTES").set_shared_memory(
        "strings", len(serialized.item())
    )
    out = httpclient.InferRequestedOutput("out")
    out.set_shared_memory("strings", 512, offset=512)
    client.infer("echo_bytes", [item], outputs=[out])
    got = shm.get_contents_as_numpy(handle, np.object_, [3], offset=512)
    assert list(got) == list(strings)


def test_unregister_while_a_request_uses_the_region(
    client: httpclient.InferenceServerClient, shm_server: Any, region: Any
) -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    handle, key = region("inflight", 32)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("inflight", key, 32)
    item = httpclient.InferInput("in", [4], "FP32").set_shared_memory("inflight", 16)
    out = httpclient.InferRequestedOutput("out")
    out.set_shared_memory("inflight", 16, offset=16)

    answers: list[Any] = []

    def infer() -> None:
        with httpclient.InferenceServerClient(shm_server.address) as other:
            try:
                answers.append(other.infer("slow_echo", [item], outputs=[out]))
            except InferenceServerException as exc:
                answers.append(exc)

    worker = threading.Thread(target=infer)
    worker.start()
    time.sleep(0.15)  # the request is inside the 400 ms model now
    client.unregister_system_shared_memory("inflight")
    worker.join(10)
    [answer] = answers
    # The request completes on the mapping it holds...
    assert not isinstance(answer, Exception), answer
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [4], offset=16), x)
    # ...and the next one no longer finds the region.
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region"):
        client.infer("slow_echo", [item], outputs=[out])
    assert client.is_server_live()


def error_of(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_bad_registrations(client: httpclient.InferenceServerClient, region: Any) -> None:
    _, key = region("r", 64)
    missing = f"/fp_missing_{uuid.uuid4().hex[:8]}"
    exc = error_of(lambda: client.register_system_shared_memory("r", missing, 64))
    assert exc.status() == "400"
    assert f"Unable to open shared memory region: '{missing}'" in exc.message()

    for offset, byte_size in [(0, 65), (64, 1), (1, 2**63 - 1), (2**63 - 1, 2**63 - 1)]:
        exc = error_of(
            lambda o=offset, b=byte_size: client.register_system_shared_memory("r", key, b, o)
        )
        assert exc.status() == "400", (offset, byte_size)
        assert "failed to register shared memory region 'r'" in exc.message()

    client.register_system_shared_memory("r", key, 64)
    exc = error_of(lambda: client.register_system_shared_memory("r", key, 32))
    assert exc.status() == "400"
    assert "shared memory region 'r' already in manager" in exc.message()

    exc = error_of(lambda: client.get_system_shared_memory_status("ghost"))
    assert exc.status() == "404"
    assert "Unable to find system shared memory region: 'ghost'" in exc.message()
    client.unregister_system_shared_memory("ghost")  # not an error, as in Triton


def test_bad_shared_memory_tensors(client: httpclient.InferenceServerClient, region: Any) -> None:
    handle, key = region("r", 64)
    client.register_system_shared_memory("r", key, 64)
    shm.set_shared_memory_region(handle, [np.ones((2, 4), np.float32)])

    def infer(offset: int = 0, size: int = 32, region_name: str = "r", out: Any = None) -> None:
        item = httpclient.InferInput("x", [2, 4], "FP32")
        item.set_shared_memory(region_name, size, offset=offset)
        client.infer("mlp", [item], outputs=[out] if out is not None else None)

    cases = [
        (lambda: infer(region_name="ghost"), "404", "Unable to find shared memory region: 'ghost'"),
        (lambda: infer(offset=64), "400", "Invalid offset for shared memory region: 'r'"),
        (lambda: infer(offset=40), "400", "Invalid offset + byte size for shared memory region"),
        (lambda: infer(offset=1, size=2**63 - 1), "400", "Invalid offset + byte size"),
        (lambda: infer(offset=2**64 - 1), "400", "'shared_memory_offset' must be an integer"),
        (lambda: infer(size=28), "400", "is 28 bytes but shape [2, 4] of FP32 needs 32"),
    ]
    small = httpclient.InferRequestedOutput("y")
    small.set_shared_memory("r", 16, offset=32)  # [2, 3] FP32 needs 24
    cases.append(
        (
            lambda: infer(out=small),
            "400",
            "output 'y' (16 bytes) should be at least 24 bytes to hold the results",
        )
    )
    outside = httpclient.InferRequestedOutput("y")
    outside.set_shared_memory("r", 32, offset=48)
    cases.append((lambda: infer(out=outside), "400", "Invalid offset + byte size"))
    for call, status, words in cases:
        exc = error_of(call)
        assert (exc.status(), words) == (status, words) and words in exc.message(), exc.message()

    # An unregistered region is unknown again.
    client.unregister_system_shared_memory("r")
    exc = error_of(lambda: infer())
    assert exc.status() == "404"
    assert "Unable to find shared memory region: 'r'" in exc.message()


def test_cuda_shared_memory_is_not_supported(client: httpclient.InferenceServerClient) -> None:
    exc = error_of(lambda: client.get_cuda_shared_memory_status())
    assert exc.status() == "501"
    assert "CUDA shared memory is not supported" in exc.message()
    exc = error_of(lambda: client.register_cuda_shared_memory("c", b"aGFuZGxl", 0, 16))
    assert exc.status() == "501"


def test_refused_unless_allowed(
    server: Any, region: Any
) -> None:  # the shared server runs without --allow-client-shm
    handle, key = region("r", 64)
    with httpclient.InferenceServerClient(server.address) as client:
        assert "system_shared_memory" not in client.get_server_metadata()["extensions"]
        exc = error_of(lambda: client.register_system_shared_memory("r", key, 64))
        assert exc.status() == "403"
        assert "Client shared memory is disabled" in exc.message()
        assert "--allow-client-shm" in exc.message()
        exc = error_of(lambda: client.get_system_shared_memory_status())
        assert exc.status() == "403"
        item = httpclient.InferInput("x", [1, 4], "FP32").set_shared_memory("r", 16)
        exc = error_of(lambda: client.infer("mlp", [item]))
        assert exc.status() == "403"
        assert "Client shared memory is disabled" in exc.message()
        assert client.is_server_live()
    del handle
