"""Property-based fuzzing of :class:`HttpApp`: random methods, paths, headers and bodies.

Whatever arrives, the answer is a 2xx, a 4xx, 501 or 503 (never a 500: no backend fails here),
every error is ``{"error": "..."}``, and the app answers a normal request right after.
Plain regression tests for what the fuzzing found sit at the end of the module.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import math
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_builders import build_repository

from forwardpass.config import ServerConfig
from forwardpass.engine import Engine
from forwardpass.protocol.http import HttpApp, HttpRequest, HttpResponse
from forwardpass.repository import ModelRepository

FUZZ = settings(
    max_examples=200,
    deadline=3000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Seconds one request may take; the models here answer in milliseconds.
TIME_BOUND_S = 5.0

ADD_INFER = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}],
}


class AppThread:
    """An engine and its app on an event loop in a thread, so hypothesis drives it plainly."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine = Engine(
            ModelRepository(root),
            ServerConfig(
                model_repository=root,
                shutdown_grace_s=5.0,
                model_control_mode="explicit",
                load_models=("*",),
                # Fuzzed loads leave models UNAVAILABLE; "ready" here means "still serving".
                strict_readiness=False,
            ),
        )
        self.run(self.engine.start())
        self.app = HttpApp(self.engine, max_request_bytes=1 << 16)

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIME_BOUND_S)

    def call(self, request: HttpRequest) -> HttpResponse:
        return self.run(self.app.handle(request))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.engine.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppThread]:
    served = AppThread(build_repository(tmp_path_factory.mktemp("fuzz") / "models"))
    try:
        yield served
    finally:
        served.close()


def check(app: AppThread, request: HttpRequest) -> HttpResponse:
    response = app.call(request)
    status = response.status
    assert 200 <= status < 300 or 400 <= status < 500 or status in (501, 503), (
        status,
        response.body[:300],
    )
    if status >= 300:
        assert response.content_type == "application/json"
        document = orjson.loads(response.body)
        assert list(document) == ["error"] and isinstance(document["error"], str)
        assert document["error"]
    # The server keeps serving everything else.
    health = app.call(HttpRequest("GET", "/v2/health/ready"))
    assert health.status == 200
    normal = app.call(HttpRequest("POST", "/v2/models/add/infer", orjson.dumps(ADD_INFER)))
    assert normal.status == 200, normal.body
    assert orjson.loads(normal.body)["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    return response


# -- strategies -------------------------------------------------------------------------------

#: Names the fuzz may load and unload; the models the check relies on stay untouched.
SCRATCH = st.sampled_from(["fz", "nope", "broken", "%2E%2E", "..", ".hidden", "a%2Fb", "%00"])
SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "v2",
            "models",
            "add",
            "echo",
            "square",
            "infer",
            "ready",
            "config",
            "stats",
            "versions",
            "1",
            "0",
            "-1",
            "99999999999999999999",
            "health",
            "live",
            "repository",
            "index",
            "load",
            "unload",
            "metrics",
            "..",
            ".",
            "%2E%2E",
            "%2F",
            "%00",
            "%ff",
            "%",
            "%zz",
            "%ED%A0%80",
            "é",
            "x" * 300,
        ]
    ),
    st.text(max_size=8),
)
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=20),
    st.just("/" + "a/" * 2000),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "", "get", "PoST"])
GARBAGE_GZIP = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=1, max_size=64).map(lambda b: gzip.compress(b)[: max(1, len(b) // 2)]),
    st.binary(max_size=64).map(lambda b: gzip.compress(b) + b"trailing"),
    st.just(gzip.compress(b"\0" * (1 << 17))),  # a bomb past the 64 KiB limit
    st.just(b"\x1f\x8b"),
)
JSON_BODIES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
INFER_BODIES = st.one_of(
    st.just(ADD_INFER),
    st.fixed_dictionaries(
        {
            "inputs": st.one_of(
                st.just(ADD_INFER["inputs"]),  # so that the rest of the document matters
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.sampled_from(["x", "a", "y", ""]),
                            "datatype": st.sampled_from(["FP32", "INT32", "BYTES", "BOOL", "FP16"]),
                            "shape": st.lists(st.integers(0, 9), max_size=3),
                            "data": st.lists(st.integers(-3, 3), max_size=9),
                        }
                    ),
                    max_size=2,
                ),
            )
        },
        optional={
            "outputs": st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["y", "b", "zz"])},
                    optional={
                        "parameters": st.dictionaries(
                            st.sampled_from(["binary_data", "classification", "\udc00"]),
                            st.one_of(st.booleans(), st.integers(-2, 5), st.integers()),
                        )
                    },
                ),
                max_size=2,
            ),
            "parameters": st.dictionaries(
                st.sampled_from(["priority", "timeout", "binary_data_output", "\ud800"]),
                st.one_of(
                    st.integers(-2, 10**6), st.integers(), st.booleans(), st.text(max_size=3)
                ),
            ),
            "id": st.one_of(st.text(max_size=3), st.just("\ud800")),
            # NaN sends orjson's parse to the standard library's.
            "z": st.sampled_from([math.nan, math.inf, 0]),
        },
    ),
)


def encode_body(value: Any) -> bytes:
    # The standard library, not orjson: it writes integers beyond 64 bits, as clients may.
    return value if isinstance(value, bytes) else json.dumps(value).encode()


BODIES = st.one_of(
    st.binary(max_size=100), JSON_BODIES.map(encode_body), INFER_BODIES.map(encode_body)
)
HEADERS = st.dictionaries(
    st.sampled_from(["content-encoding", "inference-header-content-length", "content-type", "x"]),
    st.one_of(
        st.sampled_from(
            [
                "gzip",
                "deflate",
                "identity",
                "br",
                "GZIP",
                "0",
                "-1",
                "12",
                " 7 ",
                "1_0",
                "99999999999999999999",
                "abc",
                "",
                "١٢",
            ]
        ),
        st.text(max_size=6),
    ),
)


# -- properties -------------------------------------------------------------------------------


@FUZZ
@given(METHODS, PATHS, HEADERS, BODIES)
def test_fuzz_any_route(
    app: AppThread, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    check(app, HttpRequest(method, path, body, headers))


@FUZZ
@given(
    st.sampled_from(["add", "echo", "square", "echo/versions/2", "nope"]),
    st.one_of(st.none(), st.sampled_from(["gzip", "deflate"])),
    st.one_of(INFER_BODIES.map(encode_body), st.binary(max_size=80)),
    st.one_of(st.none(), st.integers(-2, 200), st.text(max_size=4)),
    st.booleans(),
)
def test_fuzz_infer(
    app: AppThread,
    model: str,
    encoding: str | None,
    body: bytes,
    header_length: int | str | None,
    garbage: bool,
) -> None:
    headers: dict[str, str] = {}
    if header_length is not None:
        headers["inference-header-content-length"] = str(header_length)
    if encoding is not None:
        headers["content-encoding"] = encoding
        if not garbage:
            body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    check(app, HttpRequest("POST", f"/v2/models/{model}/infer", body, headers))


@FUZZ
@given(
    SCRATCH,
    st.sampled_from(["load", "unload"]),
    st.one_of(
        JSON_BODIES,
        st.fixed_dictionaries(
            {
                "parameters": st.dictionaries(
                    st.sampled_from(["config", "file:1/model.onnx", "file:../x", "file:", "y"]),
                    st.one_of(
                        JSON_BODIES.map(json.dumps),
                        st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
                        st.sampled_from(
                            [
                                '{"backend": "null"}',
                                "{",
                                "!!",
                                '{"max_batch_size": 99999999999999999999999}',
                                '{"input": [{"dims": [1e400]}]}',
                            ]
                        ),
                        JSON_BODIES,
                    ),
                )
            }
        ),
    ),
)
def test_fuzz_repository_api(app: AppThread, name: str, action: str, body: Any) -> None:
    check(app, HttpRequest("POST", f"/v2/repository/models/{name}/{action}", encode_body(body)))


@FUZZ
@given(
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=3, max_size=24).map(
        lambda v: v[: len(v) // 3 * 3]
    ),
    st.sampled_from(["gzip", "deflate"]),
    st.integers(1, 64),
    st.booleans(),
)
def test_fuzz_damaged_compressed_bodies_are_rejected(
    app: AppThread, values: list[float], encoding: str, cut: int, raw: bool
) -> None:
    # A truncated stream, or one with bytes after its end, must never pass as a shorter body.
    if raw:  # Inference-Header-Content-Length: 0, the variable batch deduced from the size
        body = struct.pack("<3f", *values[:3])  # model add takes one [3] row this way
        headers = {"inference-header-content-length": "0"}
    else:
        body = encode_body(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [len(values) // 3, 3],
                        "data": values,
                    }
                ]
            }
        )
        headers = {}
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    headers["content-encoding"] = encoding
    for damaged in (packed[: max(0, len(packed) - cut)], packed + packed[:cut]):
        response = check(app, HttpRequest("POST", "/v2/models/add/infer", damaged, headers))
        assert response.status == 400, response.body


# -- regressions found by the fuzzing above -----------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_truncated_or_trailing_compressed_body_is_rejected(app: AppThread, encoding: str) -> None:
    # Was a 200: zlib returned what it had decoded, so a cut-off stream was a shorter body
    # (its checksum never verified) and a second gzip member was silently dropped.
    body = orjson.dumps(ADD_INFER)
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    headers = {"content-encoding": encoding}
    truncated = app.call(HttpRequest("POST", "/v2/models/add/infer", packed[:-4], headers))
    assert truncated.status == 400
    assert b"stream is truncated" in truncated.body
    trailing = app.call(HttpRequest("POST", "/v2/models/add/infer", packed + packed, headers))
    assert trailing.status == 400
    assert f"{len(packed)} byte(s) follow the end".encode() in trailing.body


@pytest.mark.parametrize(
    "extra",
    [
        b'"id": "\\ud800"',
        b'"parameters": {"\\udc00": 1}',
        b'"parameters": {"p": 100000000000000000000000}',
        b'"outputs": [{"name": "y", "parameters": {"classification": 1, "q": -1e400}}]',
        b'"outputs": [{"name": "y", "parameters": {"q": 100000000000000000000000}}]',
    ],
)
def test_nan_beside_unencodable_values_is_a_400_not_a_500(app: AppThread, extra: bytes) -> None:
    # A NaN sends the body to the standard library's parser, which (unlike orjson) kept lone
    # surrogates and integers beyond 64 bits; echoed into the response they failed to encode:
    # a 500 "cannot encode the response as JSON".
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [NaN, 0, 0]}], '
        + extra
        + b"}"
    )
    response = app.call(HttpRequest("POST", "/v2/models/add/infer", body))
    assert response.status in (200, 400), response.body
