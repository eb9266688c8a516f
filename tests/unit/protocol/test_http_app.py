"""The HTTP app in-process: every route, the wire formats, and errors as ``{"error": ...}``."""

from __future__ import annotations

import base64
import gzip
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from model_builders import ADD_BIAS, null_config, run_with_engine

from forwardpass import __version__
from forwardpass.engine import Engine
from forwardpass.monitor.metrics import metrics_renderer
from forwardpass.protocol.http import EXTENSIONS, HttpApp, HttpRequest, HttpResponse

Call = Callable[..., Awaitable[HttpResponse]]


def with_app(
    root: Path,
    body: Callable[[Call, Engine], Awaitable[None]],
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> None:
    """Run ``body(call, engine)``; ``call(method, path, body=b"", **headers)`` hits the app.
    ``config`` holds ServerConfig fields, ``kw`` HttpApp arguments."""

    async def main(engine: Engine) -> None:
        app = HttpApp(engine, metrics_renderer(engine), **kw)

        async def call(method: str, path: str, body: Any = b"", **headers: str) -> HttpResponse:
            if not isinstance(body, bytes):
                body = orjson.dumps(body)
            names = {k.replace("_", "-").lower(): v for k, v in headers.items()}
            return await app.handle(HttpRequest(method, path, body, names))

        await body(call, engine)

    run_with_engine(root, main, **(config or {}))


def ok_json(response: HttpResponse) -> Any:
    assert response.status == 200, response.body
    assert response.content_type == "application/json"
    return orjson.loads(response.body)


def error(response: HttpResponse, status: int, *words: str) -> str:
    """Check an error response: its status, ``{"error": message}`` and words in the message."""
    assert response.status == status, (response.status, response.body)
    assert response.content_type == "application/json"
    document = orjson.loads(response.body)
    assert list(document) == ["error"]
    message = document["error"]
    assert isinstance(message, str)
    for word in words:
        assert word in message, message
    return message


ADD_INFER = {
    "id": "q1",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [0, 0, 0, 1, 2, 3]}],
}


# ---------------------------------------------------------------------------- server and health


def test_server_metadata_and_health(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        assert ok_json(await call("GET", "/v2")) == {
            "name": "forwardpass",
            "version": __version__,
            "extensions": list(EXTENSIONS),
        }
        for path in ("/v2/health/live", "/v2/health/ready"):
            response = await call("GET", path)
            assert (response.status, response.body) == (200, b"")
        await engine.stop()
        error(await call("GET", "/v2/health/ready"), 503, "not ready")
        assert (await call("GET", "/v2/health/live")).status == 200

    # The repository holds a broken model: readiness that ignores models (not strict).
    with_app(repo, body, {"strict_readiness": False})


def test_unknown_routes_are_404(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        for method, path in [
            ("GET", "/"),
            ("GET", "/v1x/models"),  # /v1 is the OpenAI API (protocol.openai)
            ("GET", "/v2/health"),
            ("GET", "/v2/health/sick"),
            ("GET", "/v2/models"),
            ("GET", "/v2/models/add/bogus"),
            ("GET", "/v2/models/add/versions/1/ready/more"),
            ("POST", "/v2/repository/nothing"),
            ("POST", "/v2/repository/models/add/reload"),
            ("GET", "/metricsx"),
            ("GET", "/dashboard/app.js"),
        ]:
            error(await call(method, path), 404, "no route")

    # Without the dashboard (--no-dashboard), "/" is unrouted, as on Triton.
    with_app(repo, body, dashboard=False)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v2", "GET"),
        ("DELETE", "/v2/health/live", "GET"),
        ("POST", "/v2/health/ready", "GET"),
        ("POST", "/v2/models/add", "GET"),
        ("PUT", "/v2/models/add/ready", "GET"),
        ("POST", "/v2/models/add/config", "GET"),
        ("POST", "/v2/models/add/stats", "GET"),
        ("POST", "/v2/models/stats", "GET"),
        ("GET", "/v2/models/add/infer", "POST"),
        ("GET", "/v2/repository/index", "POST"),
        ("GET", "/v2/repository/models/add/load", "POST"),
    ],
)
def test_wrong_method_is_400_naming_the_right_one(
    repo: Path, method: str, path: str, allowed: str
) -> None:
    async def body(call: Call, engine: Engine) -> None:
        error(await call(method, path), 400, f"method {method} is not allowed", f"use {allowed}")

    with_app(repo, body)


# ------------------------------------------------------------------------------ model routes


def test_model_metadata_ready_and_config(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        assert ok_json(await call("GET", "/v2/models/add")) == {
            "name": "add",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        }
        echo = ok_json(await call("GET", "/v2/models/echo/versions/2"))
        assert echo["versions"] == ["1", "2", "3"]
        assert echo["inputs"] == [{"name": "a", "datatype": "INT32", "shape": [-1, 2]}]

        assert (await call("GET", "/v2/models/add/ready")).status == 200
        assert (await call("GET", "/v2/models/echo/versions/2/ready")).status == 200
        error(
            await call("GET", "/v2/models/echo/versions/9/ready"),
            404,
            "Request for unknown model: 'echo' version 9 is not found",
        )
        error(await call("GET", "/v2/models/ghost/ready"), 404, "'ghost'")
        error(await call("GET", "/v2/models/broken/ready"), 503, "not ready")

        config = ok_json(await call("GET", "/v2/models/add/config"))
        assert config["name"] == "add"
        assert config["max_batch_size"] == 8
        assert config["input"][0]["data_type"] == "TYPE_FP32"
        assert config["output"][0]["label_filename"] == "labels.txt"
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0

        error(
            await call("GET", "/v2/models/ghost"),
            404,
            "Request for unknown model: 'ghost' is not found",
        )
        error(
            await call("GET", "/v2/models/echo/versions/9"),
            404,
            "Request for unknown model: 'echo' version 9 is not found",
        )
        error(await call("GET", "/v2/models/echo/versions/x"), 400, "integer")
        # Triton's text first, as tritonclient's users match on it; the state follows.
        error(
            await call("GET", "/v2/models/broken"),
            503,
            "Request for unknown model: 'broken' has no available versions",
            "UNAVAILABLE",
        )
        error(await call("GET", "/v2/models/ghost/config"), 404)

    with_app(repo, body)


def test_statistics_routes(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        ok_json(await call("POST", "/v2/models/add/infer", ADD_INFER))
        stats = ok_json(await call("GET", "/v2/models/add/stats"))["model_stats"]
        assert [(s["name"], s["version"], s["inference_count"]) for s in stats] == [("add", "1", 2)]
        assert stats[0]["inference_stats"]["success"]["count"] == 1
        every = ok_json(await call("GET", "/v2/models/stats"))["model_stats"]
        assert {s["name"] for s in every} == {"add", "echo", "square"}
        one = ok_json(await call("GET", "/v2/models/echo/versions/2/stats"))["model_stats"]
        assert [s["version"] for s in one] == ["2"]
        error(await call("GET", "/v2/models/ghost/stats"), 404)

    with_app(repo, body)


def test_metrics_text(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        ok_json(await call("POST", "/v2/models/add/infer", ADD_INFER))
        response = await call("GET", "/metrics")
        assert response.status == 200
        assert response.content_type.startswith("text/plain")
        text = response.body.decode()
        assert 'forwardpass_request_success_total{model="add",version="1"} 1.0' in text
        assert 'forwardpass_inference_count_total{model="add",version="1"} 2.0' in text
        error(await call("POST", "/metrics"), 404)

    with_app(repo, body)


def test_metrics_off_is_404(repo: Path) -> None:
    async def main(engine: Engine) -> None:
        app = HttpApp(engine, None)
        error(await app.handle(HttpRequest("GET", "/metrics")), 404)

    run_with_engine(repo, main)


# ------------------------------------------------------------------------------ repository API


def test_repository_index(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        index = ok_json(await call("POST", "/v2/repository/index"))
        assert [(r["name"], r["version"], r["state"]) for r in index] == [
            ("add", "1", "READY"),
            ("broken", "", "UNAVAILABLE"),
            ("echo", "1", "READY"),
            ("echo", "2", "READY"),
            ("echo", "3", "READY"),
            ("square", "1", "READY"),
        ]
        assert "config.pbtxt" in index[1]["reason"]
        ready = ok_json(await call("POST", "/v2/repository/index", {"ready": True}))
        assert "broken" not in {r["name"] for r in ready}
        error(await call("POST", "/v2/repository/index", {"ready": "yes"}), 400, "'ready'")
        error(await call("POST", "/v2/repository/index", b"{nope"), 400, "malformed JSON")
        error(await call("POST", "/v2/repository/index", b"[1]"), 400, "JSON object")

    with_app(repo, body)


def test_repository_unload_and_load(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        response = await call("POST", "/v2/repository/models/add/unload")
        assert (response.status, response.body) == (200, b"")
        error(await call("POST", "/v2/models/add/infer", ADD_INFER), 503, "unloaded")
        error(await call("GET", "/v2/models/add/ready"), 503)
        response = await call("POST", "/v2/repository/models/add/load", {})
        assert response.status == 200
        assert (await call("GET", "/v2/models/add/ready")).status == 200
        error(await call("POST", "/v2/repository/models/ghost/unload"), 404)
        error(await call("POST", "/v2/repository/models/ghost/load"), 404, "'ghost'")
        error(await call("GET", "/v2/models/ghost/ready"), 404)  # the failed load left no trace
        error(await call("POST", "/v2/repository/models/broken/load"), 400, "config.pbtxt")
        error(await call("POST", "/v2/repository/models/..%2Fadd/load"), 400, "model name")

    with_app(repo, body)


def test_repository_load_with_config_and_files(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        config = {
            "name": "uploaded",
            "backend": "null",
            "max_batch_size": 2,
            "input": [{"name": "a", "data_type": "TYPE_INT32", "dims": [2]}],
            "output": [{"name": "b", "data_type": "TYPE_INT32", "dims": [2]}],
        }
        params = {
            "config": orjson.dumps(config).decode(),
            "file:1/README": base64.b64encode(b"version one").decode(),
        }
        response = await call("POST", "/v2/repository/models/uploaded/load", {"parameters": params})
        assert response.status == 200, response.body
        assert (repo / "uploaded" / "1" / "README").read_bytes() == b"version one"
        infer = {"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [4, 5]}]}
        out = ok_json(await call("POST", "/v2/models/uploaded/infer", infer))
        assert out["outputs"][0]["data"] == [4, 5]

        load = "/v2/repository/models/uploaded/load"
        for params, words in [
            ({"config": 1}, ("JSON string",)),
            ({"config": "{"}, ("not valid JSON",)),
            ({"config": "[]"}, ("JSON object",)),
            ({"file:1/x": "!!"}, ("not valid base64",)),
            ({"file:1/x": base64.b64encode(b"x").decode()}, ("must also carry 'config'",)),
            ({"colour": "red"}, ("unknown load parameter 'colour'",)),
        ]:
            error(await call("POST", load, {"parameters": params}), 400, *words)
        error(await call("POST", load, {"parameters": []}), 400, "'parameters'")
        escape = {"config": orjson.dumps(config).decode(), "file:../evil": "eA=="}
        error(await call("POST", load, {"parameters": escape}), 400, "not a safe relative path")
        assert not (repo / "evil").exists()

    with_app(repo, body, {"allow_model_upload": True})


# -------------------------------------------------------------------------------------- infer


def test_infer_json(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        out = ok_json(await call("POST", "/v2/models/add/infer", ADD_INFER))
        assert out == {
            "model_name": "add",
            "model_version": "1",
            "id": "q1",
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 2, 4, 6]}
            ],
        }
        versioned = ok_json(
            await call(
                "POST",
                "/v2/models/echo/versions/2/infer",
                {"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [[7, 8]]}]},
            )
        )
        assert "id" not in versioned
        assert versioned["model_version"] == "2"
        assert versioned["outputs"][0]["data"] == [7, 8]

    with_app(repo, body)


def test_infer_classification_over_http(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        request = {
            **ADD_INFER,
            "outputs": [{"name": "y", "parameters": {"classification": 1}}],
        }
        out = ok_json(await call("POST", "/v2/models/add/infer", request))
        [y] = out["outputs"]
        assert (y["datatype"], y["shape"]) == ("BYTES", [2, 1])
        assert y["data"] == ["3.000000:2:cat", "6.000000:2:cat"]

    with_app(repo, body)


def test_infer_binary_input_and_output(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        x = np.array([[1, 2, 3]], dtype=np.float32)
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1, 3],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        )
        response = await call(
            "POST",
            "/v2/models/add/infer",
            header + x.tobytes(),
            inference_header_content_length=str(len(header)),
        )
        assert response.status == 200, response.body
        assert response.content_type == "application/octet-stream"
        [(name, value)] = response.headers
        assert name == "Inference-Header-Content-Length"
        length = int(value)
        document = orjson.loads(response.body[:length])
        [y] = document["outputs"]
        assert y["parameters"] == {"binary_data_size": 12}  # Triton echoes nothing else
        assert "data" not in y
        values = np.frombuffer(response.body[length:], dtype=np.float32).reshape(y["shape"])
        np.testing.assert_array_equal(values, x + ADD_BIAS)

    with_app(repo, body)


def test_infer_raw_binary_body(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        x = np.array([5, 6, 7], dtype=np.float32)
        response = await call(
            "POST", "/v2/models/add/infer", x.tobytes(), inference_header_content_length="0"
        )
        assert response.status == 200, response.body
        length = int(dict(response.headers)["Inference-Header-Content-Length"])
        np.testing.assert_array_equal(
            np.frombuffer(response.body[length:], dtype=np.float32), x + ADD_BIAS
        )
        error(
            await call(
                "POST", "/v2/models/add/infer", b"\0" * 5, inference_header_content_length="0"
            ),
            400,
            "needs 12 bytes",
        )

    with_app(repo, body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_infer_compressed_body(repo: Path, encoding: str) -> None:
    async def body(call: Call, engine: Engine) -> None:
        raw = orjson.dumps(ADD_INFER)
        packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
        response = await call("POST", "/v2/models/add/infer", packed, content_encoding=encoding)
        assert ok_json(response)["outputs"][0]["data"] == [1, 2, 3, 2, 4, 6]

    with_app(repo, body)


def test_compressed_body_errors(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        path = "/v2/models/add/infer"
        error(await call("POST", path, b"not gzip", content_encoding="gzip"), 400, "decompress")
        error(await call("POST", path, b"x", content_encoding="br"), 501, "'br'")
        bomb = gzip.compress(b" " * 10_000)
        error(await call("POST", path, bomb, content_encoding="gzip"), 413, "1000-byte limit")

    with_app(repo, body, max_request_bytes=1000)


def test_infer_errors_map_to_status(tmp_path: Path, repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        path = "/v2/models/add/infer"
        error(await call("POST", path, b"{"), 400, "malformed JSON")
        error(await call("POST", path, {"inputs": []}), 400, "expected 1 inputs but got 0 inputs")
        bad_input = {
            "inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
        }
        error(
            await call("POST", path, bad_input),
            400,
            "unexpected inference input 'z' for model 'add'",
        )
        wrong_type = {
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]}]
        }
        error(
            await call("POST", path, wrong_type),
            400,
            "inference input 'x' data-type is 'INT32', but model 'add' expects 'FP32'",
        )
        error(await call("POST", "/v2/models/ghost/infer", ADD_INFER), 404, "'ghost'")
        error(await call("POST", "/v2/models/broken/infer", ADD_INFER), 503, "not ready")
        error(
            await call("POST", path, ADD_INFER, inference_header_content_length="ten"),
            400,
            "Inference-Header-Content-Length must be an integer",
        )
        priority = {**ADD_INFER, "parameters": {"priority": -2}}
        error(await call("POST", path, priority), 400, "priority")
        shm = {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 3],
                    "parameters": {"shared_memory_region": "r"},
                }
            ]
        }
        error(await call("POST", path, shm), 403, "Client shared memory is disabled")

    with_app(repo, body)


def test_backend_failure_is_500_for_that_request_only(tmp_path: Path) -> None:
    from model_builders import write_model

    root = tmp_path / "models"
    extra = 'parameters { key: "fail_value" value: { string_value: "13" } }'
    write_model(root, "m", config=null_config("m", extra=extra))

    async def body(call: Call, engine: Engine) -> None:
        def request(a: int) -> dict[str, Any]:
            return {"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [a, 0]}]}

        error(await call("POST", "/v2/models/m/infer", request(13)), 500, "fail_value")
        assert ok_json(await call("POST", "/v2/models/m/infer", request(1)))["outputs"][0][
            "data"
        ] == [1, 0]

    with_app(root, body)


def test_a_bug_in_a_route_is_a_500_not_a_crash(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(call: Call, engine: Engine) -> None:
        def explode(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("kaboom")

        monkeypatch.setattr(engine, "metadata", explode)
        error(await call("GET", "/v2/models/add"), 500, "internal error", "kaboom")
        assert (await call("GET", "/v2/health/live")).status == 200

    with_app(repo, body)


def test_each_route_is_checked_against_its_api_group(repo: Path) -> None:
    from forwardpass.access import AccessPolicy
    from forwardpass.config import ServerConfig

    routes = {
        "health": [
            ("GET", "/v2/health/live"),
            ("GET", "/v2/health/ready"),
            ("GET", "/v2/models/add/ready"),
        ],
        "metadata": [
            ("GET", "/v2"),
            ("GET", "/v2/models/add"),
            ("GET", "/v2/models/add/versions/1"),
        ],
        "inference": [("POST", "/v2/models/add/infer")],
        "model-config": [("GET", "/v2/models/add/config")],
        "statistics": [("GET", "/v2/models/stats"), ("GET", "/v2/models/add/stats")],
        "model-repository": [("POST", "/v2/repository/index")],
    }
    for group, calls in routes.items():
        policy = AccessPolicy.from_config(
            ServerConfig(http_restricted_api=(f"{group}:admin-key=v",))
        )

        async def body(call: Call, engine: Engine, calls: Any = calls, group: str = group) -> None:
            for method, path in calls:
                error(await call(method, path), 403, "expecting header 'admin-key'")
                response = await call(method, path, admin_key="v")
                assert response.status != 403, (group, path, response.body)
            # every other group stays open
            others = [c for g, cs in routes.items() if g != group for c in cs if c[0] == "GET"]
            for method, path in others:
                assert (await call(method, path)).status != 403, path

        with_app(repo, body, {"strict_readiness": False}, access=policy)


def test_inference_key_answers_401_with_a_bearer_challenge(repo: Path) -> None:
    from forwardpass.access import AccessPolicy
    from forwardpass.config import ServerConfig

    policy = AccessPolicy.from_config(ServerConfig(api_key="k3y"))
    infer = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}

    async def body(call: Call, engine: Engine) -> None:
        response = await call("POST", "/v2/models/add/infer", infer)
        error(response, 401, "requires an API key")
        assert ("WWW-Authenticate", 'Bearer realm="forwardpass"') in response.headers
        error(await call("POST", "/v2/models/add/infer", infer, authorization="Bearer no"), 401)
        ok_json(await call("POST", "/v2/models/add/infer", infer, authorization="Bearer k3y"))
        ok_json(await call("GET", "/v2/models/add"))  # metadata needs no key

    with_app(repo, body, access=policy)
