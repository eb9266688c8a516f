"""Triton's gRPC extensions on real servers, driven by ``tritonclient.grpc``: system shared
memory, trace and log settings, the restricted-protocol policy and the API key, and TLS
(mutual optional). Each mirrors its HTTP test (test_shm_server.py, test_trace_logging.py,
test_restricted_api.py, test_tls.py) over the other wire."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from modelrepo import mlp_expected, null_config, write_model
from test_tls import pki  # noqa: F401  (the fixture: a throw-away CA and its certificates)
from test_trace_logging import ORDER, wait_for
from tritonclient.utils import InferenceServerException, serialize_byte_tensor


def error_of(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def x_input(rows: int = 1) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 4), np.float32))
    return tensor


# -- system shared memory -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shm_server(start_module_server: Any, main_repository: Path) -> Any:
    return start_module_server(
        main_repository,
        "--allow-client-shm",
        "--model-control-mode",
        "explicit",
        "--model",
        "mlp",
        "--model",
        "echo_bytes",
        "--log-level",
        "WARNING",
    )


@pytest.fixture
def gclient(shm_server: Any) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(shm_server.grpc_address)
    try:
        yield triton
    finally:
        triton.unregister_system_shared_memory()
        triton.close()


def _regions(client: grpcclient.InferenceServerClient, name: str = "") -> list[tuple[Any, ...]]:
    status = client.get_system_shared_memory_status(name)
    return sorted((r.name, r.key, r.offset, r.byte_size) for r in status.regions.values())


def test_shm_infer_status_unregister(
    gclient: grpcclient.InferenceServerClient, region: Any
) -> None:
    assert "system_shared_memory" in gclient.get_server_metadata().extensions
    x = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, -3.0]], np.float32)
    in_handle, in_key = region("input_data", x.nbytes)
    out_handle, out_key = region("output_data", 64)
    shm.set_shared_memory_region(in_handle, [x])
    gclient.register_system_shared_memory("input_data", in_key, x.nbytes)
    gclient.register_system_shared_memory("output_data", out_key, 64)
    assert _regions(gclient) == [
        ("input_data", in_key, 0, x.nbytes),
        ("output_data", out_key, 0, 64),
    ]
    assert _regions(gclient, "output_data") == [("output_data", out_key, 0, 64)]

    item = grpcclient.InferInput("x", list(x.shape), "FP32")
    item.set_shared_memory("input_data", x.nbytes)
    out = grpcclient.InferRequestedOutput("y")
    out.set_shared_memory("output_data", 24, offset=8)
    result = gclient.infer("mlp", [item], outputs=[out])
    response = result.get_response()
    assert len(response.raw_output_contents) == 1 and response.raw_output_contents[0] == b""
    [output] = response.outputs
    assert list(output.shape) == [2, 3] and output.datatype == "FP32"
    params = {k: v.WhichOneof("parameter_choice") for k, v in output.parameters.items()}
    assert set(params) == {
        "shared_memory_region",
        "shared_memory_offset",
        "shared_memory_byte_size",
    }
    assert output.parameters["shared_memory_region"].string_param == "output_data"
    assert output.parameters["shared_memory_byte_size"].int64_param == 24
    assert output.parameters["shared_memory_offset"].int64_param == 8
    got = shm.get_contents_as_numpy(out_handle, np.float32, [2, 3], offset=8)
    np.testing.assert_allclose(got, mlp_expected(x), rtol=1e-6)

    # The input region is read on every request; a mixed request (one shm input, raw rest).
    shm.set_shared_memory_region(in_handle, [x * 2])
    gclient.infer("mlp", [item], outputs=[out])
    np.testing.assert_allclose(
        shm.get_contents_as_numpy(out_handle, np.float32, [2, 3], offset=8),
        mlp_expected(x * 2),
        rtol=1e-6,
    )
    # Output in shared memory, input raw: the answer's slot stays empty, the region holds it.
    gclient.infer("mlp", [x_input(2)], outputs=[out])
    np.testing.assert_allclose(
        shm.get_contents_as_numpy(out_handle, np.float32, [2, 3], offset=8),
        mlp_expected(np.ones((2, 4), np.float32)),
        rtol=1e-6,
    )

    gclient.unregister_system_shared_memory("input_data")
    assert [r[0] for r in _regions(gclient)] == ["output_data"]
    gclient.unregister_system_shared_memory()
    assert _regions(gclient) == []


def test_shm_bytes_and_streaming(gclient: grpcclient.InferenceServerClient, region: Any) -> None:
    strings = np.array([b"hello", b"", "forwardpass \u2713".encode()], dtype=object)
    serialized = serialize_byte_tensor(strings)
    handle, key = region("strings", 1024)
    shm.set_shared_memory_region(handle, [serialized])
    gclient.register_system_shared_memory("strings", key, 1024)
    item = grpcclient.InferInput("in", [3], "BYTES")
    item.set_shared_memory("strings", len(serialized.item()))
    out = grpcclient.InferRequestedOutput("out")
    out.set_shared_memory("strings", 512, offset=512)
    gclient.infer("echo_bytes", [item], outputs=[out])
    assert list(shm.get_contents_as_numpy(handle, np.object_, [3], offset=512)) == list(strings)

    # The same request on a stream.
    shm.set_shared_memory_region(handle, [np.zeros(512, np.uint8)], offset=512)
    answers: list[Any] = []
    gclient.start_stream(callback=lambda result, error: answers.append((result, error)))
    gclient.async_stream_infer("echo_bytes", [item], outputs=[out], request_id="s")
    gclient.stop_stream()  # waits for the answers owed
    [(result, error)] = answers
    assert error is None, error
    assert result.get_response().raw_output_contents[0] == b""
    assert list(shm.get_contents_as_numpy(handle, np.object_, [3], offset=512)) == list(strings)


def test_shm_bad_registrations(gclient: grpcclient.InferenceServerClient, region: Any) -> None:
    _, key = region("r", 64)
    missing = f"/fp_missing_{uuid.uuid4().hex[:8]}"
    exc = error_of(lambda: gclient.register_system_shared_memory("r", missing, 64))
    assert exc.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"Unable to open shared memory region: '{missing}'" in exc.message()
    for offset, byte_size in [(0, 65), (64, 1), (1, 2**63 - 1)]:
        exc = error_of(
            lambda o=offset, b=byte_size: gclient.register_system_shared_memory("r", key, b, o)
        )
        assert exc.status() == "StatusCode.INVALID_ARGUMENT", (offset, byte_size)
        assert "failed to register shared memory region 'r'" in exc.message()
    gclient.register_system_shared_memory("r", key, 64)
    exc = error_of(lambda: gclient.register_system_shared_memory("r", key, 32))
    assert exc.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shared memory region 'r' already in manager" in exc.message()
    exc = error_of(lambda: gclient.get_system_shared_memory_status("ghost"))
    assert exc.status() == "StatusCode.NOT_FOUND"
    assert "Unable to find system shared memory region: 'ghost'" in exc.message()
    gclient.unregister_system_shared_memory("ghost")  # not an error, as in Triton


def test_shm_bad_tensors(gclient: grpcclient.InferenceServerClient, region: Any) -> None:
    handle, key = region("r", 64)
    gclient.register_system_shared_memory("r", key, 64)
    shm.set_shared_memory_region(handle, [np.ones((2, 4), np.float32)])

    def infer(offset: int = 0, size: int = 32, name: str = "r", out: Any = None) -> None:
        item = grpcclient.InferInput("x", [2, 4], "FP32")
        item.set_shared_memory(name, size, offset=offset)
        gclient.infer("mlp", [item], outputs=[out] if out is not None else None)

    small = grpcclient.InferRequestedOutput("y")
    small.set_shared_memory("r", 16, offset=32)  # [2, 3] FP32 needs 24
    outside = grpcclient.InferRequestedOutput("y")
    outside.set_shared_memory("r", 32, offset=48)
    invalid = "StatusCode.INVALID_ARGUMENT"
    cases = [
        (lambda: infer(name="ghost"), "StatusCode.NOT_FOUND", "Unable to find shared memory"),
        (lambda: infer(offset=64), invalid, "Invalid offset for shared memory region: 'r'"),
        (lambda: infer(offset=40), invalid, "Invalid offset + byte size for shared memory"),
        (lambda: infer(offset=1, size=2**63 - 1), invalid, "Invalid offset + byte size"),
        (lambda: infer(size=28), invalid, "is 28 bytes but shape [2, 4] of FP32 needs 32"),
        (lambda: infer(out=small), invalid, "output 'y' (16 bytes) should be at least 24 bytes"),
        (lambda: infer(out=outside), invalid, "Invalid offset + byte size"),
    ]
    for call, status, words in cases:
        exc = error_of(call)
        assert (exc.status(), words in exc.message()) == (status, True), exc.message()
    gclient.unregister_system_shared_memory("r")
    exc = error_of(lambda: infer())
    assert exc.status() == "StatusCode.NOT_FOUND"
    assert "Unable to find shared memory region: 'r'" in exc.message()


def test_shm_input_with_raw_contents_is_refused(
    shm_server: Any, gclient: grpcclient.InferenceServerClient, region: Any
) -> None:
    """raw_input_contents counts only the inputs outside shared memory."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    handle, key = region("r", 16)
    shm.set_shared_memory_region(handle, [np.ones(4, np.float32)])
    gclient.register_system_shared_memory("r", key, 16)
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.parameters["shared_memory_region"].string_param = "r"
    tensor.parameters["shared_memory_byte_size"].int64_param = 16
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    import grpc

    with grpc.insecure_channel(shm_server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents has 1 entries but the request has 0 input(s)" in (
            info.value.details()
        )
        del request.raw_input_contents[:]
        answer = stub.ModelInfer(request)
        got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(1, 3)
        np.testing.assert_allclose(got, mlp_expected(np.ones((1, 4), np.float32)), rtol=1e-6)


def test_cuda_shm_is_unimplemented(gclient: grpcclient.InferenceServerClient) -> None:
    for call in (
        lambda: gclient.get_cuda_shared_memory_status(),
        lambda: gclient.register_cuda_shared_memory("c", b"aGFuZGxl", 0, 16),
        lambda: gclient.unregister_cuda_shared_memory(),
    ):
        exc = error_of(call)
        assert exc.status() == "StatusCode.UNIMPLEMENTED"
        assert "CUDA shared memory is not supported" in exc.message()
    assert "cuda_shared_memory" not in gclient.get_server_metadata().extensions


def test_shm_refused_unless_allowed(server: Any, region: Any) -> None:
    """The shared session server runs without --allow-client-shm."""
    handle, key = region("r", 64)
    shm.set_shared_memory_region(handle, [np.ones(4, np.float32)])
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        assert "system_shared_memory" not in client.get_server_metadata().extensions
        for call in (
            lambda: client.register_system_shared_memory("r", key, 64),
            lambda: client.get_system_shared_memory_status(),
            lambda: client.unregister_system_shared_memory(),
        ):
            exc = error_of(call)
            assert exc.status() == "StatusCode.PERMISSION_DENIED"
            assert "Client shared memory is disabled" in exc.message()
            assert "--allow-client-shm" in exc.message()
        item = grpcclient.InferInput("x", [1, 4], "FP32")
        item.set_shared_memory("r", 16)
        exc = error_of(lambda: client.infer("mlp", [item]))
        assert exc.status() == "StatusCode.PERMISSION_DENIED"
        assert "Client shared memory is disabled" in exc.message()
        out = grpcclient.InferRequestedOutput("y")
        out.set_shared_memory("r", 24)
        exc = error_of(lambda: client.infer("mlp", [x_input()], outputs=[out]))
        assert exc.status() == "StatusCode.PERMISSION_DENIED"
        assert client.is_server_live()


# -- trace and log settings -----------------------------------------------------------------------


def _settings(message: Any) -> dict[str, Any]:
    return {key: list(value.value) for key, value in message.settings.items()}


def test_trace_and_log_settings(start_server: Any, main_repository: Path, tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.json"
    log_file = tmp_path / "server.log"
    server = start_server(
        main_repository,
        "--model-control-mode",
        "explicit",
        "--model",
        "mlp",
        "--trace-config",
        f"triton,file={trace_file}",
        "--trace-config",
        "rate=1",
        "--trace-config",
        "level=OFF",
        "--log-file",
        str(log_file),
    )
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        assert {"trace", "logging"} <= set(client.get_server_metadata().extensions)
        initial = {
            "trace_file": [str(trace_file)],
            "trace_level": ["OFF"],
            "trace_rate": ["1"],
            "trace_count": ["-1"],
            "log_frequency": ["0"],
            "trace_mode": ["triton"],
        }
        assert _settings(client.get_trace_settings()) == initial
        assert _settings(client.get_trace_settings(model_name="mlp")) == initial
        client.infer("mlp", [x_input()])  # OFF: nothing traced

        updated = client.update_trace_settings(
            settings={"trace_level": ["TIMESTAMPS"], "trace_count": "3"}
        )
        assert _settings(updated) == {
            **initial,
            "trace_level": ["TIMESTAMPS"],
            "trace_count": ["3"],
        }
        for i in range(5):
            client.infer("mlp", [x_input()], request_id=f"req{i}")
        assert _settings(client.get_trace_settings())["trace_count"] == ["0"]
        records = wait_for(trace_file)
        headers = [r for r in records if "model_name" in r]
        assert [h["request_id"] for h in headers] == ["req0", "req1", "req2"]
        for header in headers:
            stamps = [
                r["timestamps"][0] for r in records if r["id"] == header["id"] and "timestamps" in r
            ]
            names = [s["name"] for s in stamps]
            # The same activities as HTTP's, between the wire's own receive/send stamps.
            assert [n for n in names if n in ORDER[1:-1]] == ORDER[1:-1], names
            ns = [s["ns"] for s in stamps]
            assert ns == sorted(ns)

        # Per model: override, then clear (a setting with no values), as tritonclient sends.
        model = client.update_trace_settings(
            model_name="mlp", settings={"trace_count": "-1", "trace_rate": "2"}
        )
        assert _settings(model)["trace_count"] == ["-1"]
        assert _settings(model)["trace_rate"] == ["2"]
        assert _settings(client.get_trace_settings())["trace_count"] == ["0"]
        cleared = client.update_trace_settings(
            model_name="mlp", settings={"trace_count": None, "trace_rate": None}
        )
        assert _settings(cleared) == _settings(client.get_trace_settings())
        exc = error_of(lambda: client.get_trace_settings(model_name="nope"))
        assert exc.status() == "StatusCode.INVALID_ARGUMENT"
        assert "Request for unknown model : nope" in exc.message()
        exc = error_of(
            lambda: client.update_trace_settings(settings={"trace_file": str(tmp_path / "o")})
        )
        assert exc.status() == "StatusCode.INVALID_ARGUMENT"
        assert "can not be updated through network" in exc.message()
        exc = error_of(lambda: client.update_trace_settings(settings={"trace_rate": "fast"}))
        assert exc.status() == "StatusCode.INVALID_ARGUMENT"

        logs = client.get_log_settings(as_json=True)["settings"]
        assert logs == {
            "log_file": {"string_param": str(log_file)},
            "log_info": {"bool_param": True},
            "log_warning": {"bool_param": True},
            "log_error": {"bool_param": True},
            "log_verbose_level": {"uint32_param": 0},
            "log_format": {"string_param": "default"},
        }
        after = client.update_log_settings({"log_info": False, "log_format": "ISO8601"})
        assert after.settings["log_info"].bool_param is False
        assert after.settings["log_format"].string_param == "ISO8601"
        client.update_trace_settings(settings={"trace_rate": "5"})  # logged at INFO: hidden
        client.update_log_settings({"log_info": True, "log_verbose_level": 1})
        assert client.get_log_settings().settings["log_verbose_level"].uint32_param == 1
        client.update_trace_settings(settings={"trace_rate": "6"})  # shown
        exc = error_of(lambda: client.update_log_settings({"log_format": "json"}))
        assert exc.status() == "StatusCode.INVALID_ARGUMENT"
        assert "invalid argument for --log_format" in exc.message()
        # A switch of the wrong type (tritonclient checks types; the raw stub does not).
        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc

        request = pb.LogSettingsRequest()
        request.settings["log_info"].string_param = "yes"
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.LogSettings(request)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "log_info" in info.value.details()
    finally:
        client.close()
    assert server.stop() == 0
    text = log_file.read_text()
    assert "rate=6" in text and "rate=5" not in text


# -- restricted protocol and API key --------------------------------------------------------------

ADMIN = {"triton-grpc-protocol-admin-key": "s3cret"}
BEARER = {"authorization": "Bearer k3y"}


@pytest.fixture(scope="module")
def guarded(start_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("grpc_access") / "models"
    write_model(root, "echo", config=null_config("echo", max_batch_size=4))
    return start_module_server(
        root,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--grpc-restricted-protocol",
        "model-repository,model-config,statistics,shared-memory,trace,logging:admin-key=s3cret",
        "--api-key",
        "k3y",
        "--log-level",
        "WARNING",
    )


def _echo() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("in", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[3, 4]], np.float32))
    return tensor


def test_restricted_protocol(guarded: Any) -> None:
    client = grpcclient.InferenceServerClient(guarded.grpc_address)
    try:
        calls = [
            lambda h: client.get_model_repository_index(headers=h),
            lambda h: client.unload_model("nope", headers=h),
            lambda h: client.get_model_config("echo", headers=h),
            lambda h: client.get_inference_statistics("echo", headers=h),
            lambda h: client.get_system_shared_memory_status(headers=h),
            lambda h: client.get_cuda_shared_memory_status(headers=h),
            lambda h: client.get_trace_settings(headers=h),
            lambda h: client.get_log_settings(headers=h),
        ]
        for call in calls:
            for headers in (
                None,
                {"triton-grpc-protocol-admin-key": "guess"},
                {"admin-key": "s3cret"},
            ):
                exc = error_of(lambda c=call, h=headers: c(h))
                assert exc.status() == "StatusCode.PERMISSION_DENIED"
                assert (
                    "This API is restricted, expecting header "
                    "'triton-grpc-protocol-admin-key'" in exc.message()
                )
        index = client.get_model_repository_index(headers=ADMIN)
        assert [m.name for m in index.models] == ["echo"]
        assert client.get_model_config("echo", headers=ADMIN).config.name == "echo"
        assert client.get_trace_settings(headers=ADMIN).settings
        assert client.get_log_settings(headers=ADMIN).settings
        # Health and metadata are not restricted.
        assert client.is_server_ready() and client.is_model_ready("echo")
        assert client.get_model_metadata("echo").name == "echo"
    finally:
        client.close()


def test_api_key_guards_inference(guarded: Any) -> None:
    client = grpcclient.InferenceServerClient(guarded.grpc_address)
    try:
        exc = error_of(lambda: client.infer("echo", [_echo()]))
        assert exc.status() == "StatusCode.UNAUTHENTICATED"
        assert "inference requires an API key" in exc.message()
        exc = error_of(
            lambda: client.infer("echo", [_echo()], headers={"authorization": "Bearer x"})
        )
        assert exc.status() == "StatusCode.UNAUTHENTICATED" and "invalid API key" in exc.message()
        result = client.infer("echo", [_echo()], headers=BEARER)
        np.testing.assert_array_equal(result.as_numpy("out"), [[3, 4]])

        # The stream: refused as a whole without the key, served with it.
        answers: list[Any] = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        try:
            client.async_stream_infer("echo", [_echo()])
        except InferenceServerException:
            pass  # the refusal may have ended the stream before the request went out
        client.stop_stream()
        [(result, error)] = answers
        assert result is None and error is not None
        assert error.status() == "StatusCode.UNAUTHENTICATED"
        answers.clear()
        client.start_stream(
            callback=lambda result, error: answers.append((result, error)), headers=BEARER
        )
        client.async_stream_infer("echo", [_echo()], request_id="k")
        client.stop_stream()
        [(result, error)] = answers
        assert error is None and result.get_response().id == "k"
        # The key is not an admin key, nor the reverse.
        exc = error_of(lambda: client.get_model_repository_index(headers=BEARER))
        assert exc.status() == "StatusCode.PERMISSION_DENIED"
        exc = error_of(lambda: client.infer("echo", [_echo()], headers=ADMIN))
        assert exc.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()


def test_bad_restricted_protocol_spec_is_one_line(main_repository: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "forwardpass", "serve", "--http-port", "0", "--grpc-port", "0",
         "--grpc-restricted-protocol", "inference:no-equals-sign"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "--grpc-restricted-protocol" in result.stderr


# -- TLS ------------------------------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _tls_client(server: Any, pki: dict[str, Path], with_cert: bool) -> Any:  # noqa: F811
    return grpcclient.InferenceServerClient(
        server.grpc_address,
        ssl=True,
        root_certificates=str(pki["ca"]),
        private_key=str(pki["client_key"]) if with_cert else None,
        certificate_chain=str(pki["client"]) if with_cert else None,
    )


@needs_openssl
def test_tls_serves_and_plaintext_is_refused(start_server: Any, pki: dict[str, Path]) -> None:  # noqa: F811
    server = start_server(
        None, "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])
    )
    with _tls_client(server, pki, with_cert=False) as client:
        assert client.is_server_live()
        assert client.get_server_metadata().name == "forwardpass"
    with grpcclient.InferenceServerClient(server.grpc_address) as plain:
        exc = error_of(lambda: plain.is_server_live())
        assert exc.status() == "StatusCode.UNAVAILABLE"


@needs_openssl
def test_mutual_tls(start_server: Any, pki: dict[str, Path]) -> None:  # noqa: F811
    server = start_server(
        None,
        "--tls-cert",
        str(pki["server"]),
        "--tls-key",
        str(pki["server_key"]),
        "--tls-ca",
        str(pki["ca"]),
    )
    with _tls_client(server, pki, with_cert=False) as anonymous:
        exc = error_of(lambda: anonymous.is_server_live())
        assert exc.status() == "StatusCode.UNAVAILABLE"
    with _tls_client(server, pki, with_cert=True) as client:
        assert client.is_server_live()
