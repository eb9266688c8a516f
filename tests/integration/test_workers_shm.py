"""System shared memory with ``forwardpass serve --workers 2``: a region registered through one
connection serves inferences on any other (tritonclient pools connections, perf_analyzer
``--shared-memory system`` runs several), whichever worker the kernel hands them to.

Every request goes out on a fresh connection, so both workers take some; the per-worker
counters of /metrics show that they did.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from modelrepo import add_onnx, write_model
from rawhttp import RawResponse, raw_request
from test_workers import _metrics, _served, _until, _workers, _zombie

ADDER_CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'


def _repository(root: Path) -> Path:
    write_model(root, "adder", config=ADDER_CONFIG, versions={1: add_onnx(1.0, [-1, 2])})
    return root


@pytest.fixture(scope="module")
def cluster(start_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = _repository(tmp_path_factory.mktemp("workers-shm") / "models")
    return start_module_server(root, "--workers", "2", "--allow-client-shm")


@pytest.fixture
def regions() -> Iterator[Any]:
    """``regions(byte_size)`` creates a client object; all are destroyed at the end."""
    handles: list[Any] = []

    def create(byte_size: int) -> tuple[Any, str]:
        key = f"/fp_wk_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, byte_size)
        handles.append(handle)
        return handle, key

    try:
        yield create
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)


def _infer(address: str, source: str = "in", target: str = "out") -> RawResponse:
    """adder on a fresh connection: x from region ``source``, y into region ``target``."""
    place = {"shared_memory_byte_size": 8}
    body = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 2],
                "parameters": {"shared_memory_region": source, **place},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"shared_memory_region": target, **place}}],
    }
    return raw_request(address, "POST", "/v2/models/adder/infer", body)


def _statuses(address: str, times: int = 16) -> list[Any]:
    """The region status answered on ``times`` fresh connections (so by both workers)."""
    answers = []
    for _ in range(times):
        response = raw_request(address, "GET", "/v2/systemsharedmemory/status")
        assert response.status == 200, response.body
        answers.append(sorted(response.json(), key=lambda s: s["name"]))
    return answers


def _infer_everywhere(address: str, handles: tuple[Any, Any], count: int = 40) -> None:
    """``count`` inferences through the regions, each checked; both workers must take some."""
    source, target = handles
    before = _served(_metrics(address))
    for i in range(count):
        x = np.array([[i, -2 * i]], np.float32)
        shm.set_shared_memory_region(source, [x])
        response = _infer(address)
        assert response.status == 200, response.body
        output = response.json()["outputs"][0]
        assert "data" not in output and output["shape"] == [1, 2]
        got = shm.get_contents_as_numpy(target, np.float32, [1, 2])
        np.testing.assert_array_equal(got, x + 1.0)
    served = _served(_metrics(address))
    assert all(served[w] > before.get(w, 0) for w in (0, 1)), (before, served)


def _register_at_once(address: str, name: str, keys: tuple[str, str]) -> dict[str, RawResponse]:
    """Register ``name`` with each key from its own connection, at the same moment."""
    answers: dict[str, RawResponse] = {}
    barrier = threading.Barrier(len(keys))

    def register(key: str) -> None:
        barrier.wait()
        path = f"/v2/systemsharedmemory/region/{name}/register"
        answers[key] = raw_request(address, "POST", path, {"key": key, "byte_size": 8})

    threads = [threading.Thread(target=register, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_a_region_registered_once_serves_every_worker(cluster: Any, regions: Any) -> None:
    (source, source_key), (target, target_key) = regions(8), regions(8)
    client = httpclient.InferenceServerClient(cluster.address)
    try:
        client.register_system_shared_memory("in", source_key, 8)
        client.register_system_shared_memory("out", target_key, 8)
    finally:
        client.close()
    expected = [
        {"name": "in", "key": source_key, "offset": 0, "byte_size": 8},
        {"name": "out", "key": target_key, "offset": 0, "byte_size": 8},
    ]
    assert _statuses(cluster.address) == [expected] * 16
    _infer_everywhere(cluster.address, (source, target))

    # Unregistered through another connection: no worker knows the regions any more.
    other = httpclient.InferenceServerClient(cluster.address)
    try:
        other.unregister_system_shared_memory("in")
    finally:
        other.close()
    assert _statuses(cluster.address) == [expected[1:]] * 16
    for _ in range(16):
        response = raw_request(cluster.address, "GET", "/v2/systemsharedmemory/region/in/status")
        assert response.status == 404
        assert "Unable to find system shared memory region: 'in'" in response.error
        response = _infer(cluster.address)
        assert response.status == 404 and "shared memory region: 'in'" in response.error
    assert raw_request(cluster.address, "POST", "/v2/systemsharedmemory/unregister").status == 200
    assert _statuses(cluster.address) == [[]] * 16


def test_grpc_registers_and_unregisters_on_every_worker(cluster: Any, regions: Any) -> None:
    (source, source_key), (target, target_key) = regions(8), regions(8)
    with grpcclient.InferenceServerClient(cluster.grpc_address) as client:
        client.register_system_shared_memory("in", source_key, 8)
        client.register_system_shared_memory("out", target_key, 8)
    _infer_everywhere(cluster.address, (source, target), count=24)
    for _ in range(8):  # fresh gRPC channels: both workers answer the same status
        with grpcclient.InferenceServerClient(cluster.grpc_address) as client:
            status = client.get_system_shared_memory_status()
            assert sorted(status.regions) == ["in", "out"]
            assert status.regions["in"].key == source_key
    with grpcclient.InferenceServerClient(cluster.grpc_address) as client:
        client.unregister_system_shared_memory()
    assert _statuses(cluster.address) == [[]] * 16


def test_a_failed_registration_is_on_no_worker(cluster: Any, regions: Any) -> None:
    _, key = regions(8)
    missing = f"/fp_wk_missing_{uuid.uuid4().hex[:8]}"
    for _ in range(8):
        body = {"key": missing, "byte_size": 8}
        response = raw_request(
            cluster.address, "POST", "/v2/systemsharedmemory/region/r/register", body
        )
        assert response.status == 400 and "Unable to open shared memory region" in response.error
    assert _statuses(cluster.address) == [[]] * 16

    # Two clients register the same name with different objects at the same time, through
    # different connections: a worker that registered it first and then hears of the other
    # from its sibling refuses it there, so each is undone; never one worker with each.
    seen: set[tuple[int, ...]] = set()
    _, other = regions(8)
    for _ in range(80):  # about one try in five lands them on both workers at once
        answers = _register_at_once(cluster.address, "r", (key, other))
        outcome = tuple(sorted(a.status for a in answers.values()))
        seen.add(outcome)
        assert outcome in ((200, 400), (400, 400)), answers
        statuses = _statuses(cluster.address, times=8)
        assert all(s == statuses[0] for s in statuses), statuses  # every worker the same
        if outcome == (400, 400):  # each worker refused the other's: both undone
            assert all("registered by no worker" in a.error for a in answers.values()), answers
            assert statuses[0] == []
        else:
            (winner,) = (k for k, a in answers.items() if a.status == 200)
            assert statuses[0] == [{"name": "r", "key": winner, "offset": 0, "byte_size": 8}]
        assert (
            raw_request(cluster.address, "POST", "/v2/systemsharedmemory/unregister").status == 200
        )
        if (400, 400) in seen:
            break
    assert (400, 400) in seen, seen  # the siblings' refusals were exercised


def test_a_killed_worker_comes_back_with_the_regions(
    start_server: Any, tmp_path: Path, regions: Any
) -> None:
    server = start_server(_repository(tmp_path / "models"), "--workers", "2", "--allow-client-shm")
    (source, source_key), (target, target_key), (_, gone_key) = regions(8), regions(8), regions(8)
    for name, key in (("in", source_key), ("gone", gone_key), ("out", target_key)):
        body = {"key": key, "byte_size": 8}
        path = f"/v2/systemsharedmemory/region/{name}/register"
        assert raw_request(server.address, "POST", path, body).status == 200
    path = "/v2/systemsharedmemory/region/gone/unregister"
    assert raw_request(server.address, "POST", path).status == 200
    victim = _workers(server.address)[1]
    os.kill(victim, signal.SIGKILL)
    _until(lambda: not os.path.exists(f"/proc/{victim}") or _zombie(victim), "the worker died")
    _until(lambda: "worker 1 is serving again" in "".join(server.log), "the worker was back")
    assert _workers(server.address)[1] != victim
    # The new worker replayed the registrations (and not the one unregistered since).
    expected = [
        {"name": "in", "key": source_key, "offset": 0, "byte_size": 8},
        {"name": "out", "key": target_key, "offset": 0, "byte_size": 8},
    ]
    assert _statuses(server.address) == [expected] * 16
    _infer_everywhere(server.address, (source, target))
