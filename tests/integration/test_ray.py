"""forwardpass on a real local Ray Serve cluster: tritonclient over HTTP against the ingress,
an ensemble through deployment handles, bad input, a killed replica, an unreachable cluster.

One cluster (2 CPUs, no dashboard) serves the whole module: starting Ray takes seconds.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
import ray
import tritonclient.http as httpclient
from modelrepo import add_onnx, null_config, write_model
from ray import serve
from tritonclient.utils import InferenceServerException

from forwardpass.ray.application import RayOptions
from forwardpass.ray.cluster import APP_NAME, deploy

ADD = 1.5  # what "add" adds

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ADD_CONFIG = """
name: "add"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { }
"""

ADD_TWICE_CONFIG = """
name: "add_twice"
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling { step [
  { model_name: "add" model_version: -1 input_map { key: "x" value: "x" }
    output_map { key: "y" value: "mid" } },
  { model_name: "add" model_version: -1 input_map { key: "x" value: "mid" }
    output_map { key: "y" value: "y" } }
] }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The application's HTTP addresses: the ingress's own server, and Ray Serve's proxy."""
    root = tmp_path_factory.mktemp("ray_repo")
    write_model(root, "add", config=ADD_CONFIG, versions={1: add_onnx(ADD, ["batch", 3])})
    write_model(root, "add_twice", config=ADD_TWICE_CONFIG)
    # 300 ms per batch: long enough to kill its replica with a request in flight.
    write_model(root, "slow", config=null_config("slow", datatype="TYPE_INT32", delay_ms=300))
    write_model(root, "broken", config="name: broken\nmax_batch_size: [[[\n")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        ingress = deploy(
            RayOptions(
                root,
                replica_cpus=0.1,
                ingress_cpus=0.1,
                listen="127.0.0.1:0",
                grpc_listen="127.0.0.1:0",
            ),
            "127.0.0.1",
            port,
            timeout_s=120,
        )
        own = ingress.http_address.remote().result(timeout_s=30)
        grpc = ingress.grpc_address.remote().result(timeout_s=30)
        yield {"own": own, "proxy": f"127.0.0.1:{port}", "grpc": grpc}
    finally:
        ray.shutdown()  # the replicas go with the cluster (serve.shutdown drains: seconds)


@pytest.fixture(params=["own", "proxy"])
def client(
    ray_urls: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(ray_urls[request.param], network_timeout=30)
    yield c
    c.close()


def _infer(
    client: httpclient.InferenceServerClient, model: str, x: np.ndarray, binary: bool = True
) -> np.ndarray:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("y", binary)])
    out = result.as_numpy("y")
    assert out is not None
    return out


def test_health_metadata_and_index(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add") and not client.is_model_ready("nosuch")
    meta = client.get_model_metadata("add")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get_model_config("add")["max_batch_size"] == 8
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["add"]["state"] == "READY"
    assert index["add_twice"]["state"] == "READY"
    # Could not be read: never deployed, listed with the reason (as a failed load in Triton).
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "config.pbtxt" in index["broken"]["reason"]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("broken")
    assert caught.value.status() == "503"


def test_infer_json_and_binary(client: httpclient.InferenceServerClient) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(_infer(client, "add", x), x + ADD)
    np.testing.assert_allclose(_infer(client, "add", x[:1], binary=False), x[:1] + ADD)


def test_replicas_follow_instance_group(ray_urls: dict[str, str]) -> None:
    status = serve.status().applications[APP_NAME].deployments
    assert status["add"].replica_states.get("RUNNING") == 2
    assert status["add_twice"].replica_states.get("RUNNING") == 1


def test_ensemble_calls_steps_through_handles(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_allclose(_infer(client, "add_twice", x), x + 2 * ADD)


def test_grpc_on_the_ingress(ray_urls: dict[str, str]) -> None:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(ray_urls["grpc"]) as client:
        assert client.is_server_ready() and client.is_model_ready("add_twice")
        x = np.ones((2, 3), dtype=np.float32)
        inp = grpcclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer("add_twice", [inp]).as_numpy("y")
        np.testing.assert_allclose(out, x + 2 * ADD)
        bad = grpcclient.InferInput("x", [2, 4], "FP32")
        bad.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("add", [bad])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_bad_input_is_a_clear_400(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        _infer(client, "add", x)
    assert caught.value.status() == "400"
    assert "x" in caught.value.message() and "[2,4]" in caught.value.message().replace(" ", "")
    with pytest.raises(InferenceServerException) as caught:
        _infer(client, "nosuch", x)
    assert caught.value.status() == "404"


def test_statistics_say_unsupported(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("add")
    assert caught.value.status() == "501" and "Ray" in caught.value.message()


@pytest.mark.parametrize("client", ["own"], indirect=True)
@pytest.mark.parametrize(
    "route", ["models/add/monitor", "models/add/fairness", "models/add/log", "generate"]
)
def test_monitoring_routes_say_unsupported(
    client: httpclient.InferenceServerClient, ray_urls: dict[str, str], route: str
) -> None:
    # The ingress is no Engine: the monitoring routes answer 501 naming Ray, never a 500.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as caught:
        if route == "generate":
            request = urllib.request.Request(
                f"http://{ray_urls['own']}/v2/models/add/generate", data=b'{"text_input": "x"}'
            )
        else:
            request = urllib.request.Request(f"http://{ray_urls['own']}/v2/{route}")
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 501
    assert "Ray" in caught.value.read().decode()


@pytest.mark.parametrize("client", ["own"], indirect=True)
def test_openai_api_says_unsupported(
    client: httpclient.InferenceServerClient, ray_urls: dict[str, str]
) -> None:
    import json
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{ray_urls['own']}/v1/models", timeout=30)
    assert caught.value.code == 501
    assert "Ray" in json.loads(caught.value.read())["error"]["message"]


def _slow_infer(client: httpclient.InferenceServerClient) -> np.ndarray:
    inp = httpclient.InferInput("in", [2], "INT32")
    inp.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    out = client.infer("slow", [inp]).as_numpy("out")
    assert out is not None
    return out


@pytest.mark.parametrize("client", ["own"], indirect=True)
def test_killed_replica_fails_in_flight_then_recovers(
    client: httpclient.InferenceServerClient,
) -> None:
    np.testing.assert_array_equal(_slow_infer(client), [1, 2])
    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and "#slow#" in a["name"]
    ]
    assert len(replicas) == 1
    actor = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    pending = client.async_infer(
        "slow",
        [_int_input()],
    )
    time.sleep(0.1)  # the request is in the replica's 300 ms batch
    ray.kill(actor, no_restart=True)
    with pytest.raises(InferenceServerException) as caught:
        pending.get_result()
    assert caught.value.status() == "503" and "died" in caught.value.message()
    # Ray Serve's controller starts a new replica; later requests succeed.
    deadline = time.monotonic() + 60
    while True:
        try:
            np.testing.assert_array_equal(_slow_infer(client), [1, 2])
            break
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _int_input() -> httpclient.InferInput:
    inp = httpclient.InferInput("in", [2], "INT32")
    inp.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    return inp


def test_unreachable_cluster_is_a_clear_error_fast(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "forwardpass", "serve", "--no-grpc"]
        + ["--model-repository", str(tmp_path), "--ray", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in done.stderr
    assert time.monotonic() - began < 30
