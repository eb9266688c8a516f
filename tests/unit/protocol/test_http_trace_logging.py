"""The trace and logging extensions' HTTP routes, in-process."""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from model_builders import run_with_engine

from forwardpass.engine import Engine
from forwardpass.monitor.logsettings import LogControl, LogSettings
from forwardpass.protocol.http import EXTENSIONS, HttpApp, HttpRequest, HttpResponse

Call = Callable[..., Awaitable[HttpResponse]]


def with_app(
    root: Path, body: Callable[[Call, Engine], Awaitable[None]], logs: Any = None, **config: Any
) -> None:
    async def main(engine: Engine) -> None:
        app = HttpApp(engine, None, logs=logs)

        async def call(method: str, path: str, body: Any = b"") -> HttpResponse:
            if not isinstance(body, bytes):
                body = orjson.dumps(body)
            return await app.handle(HttpRequest(method, path, body, {}))

        await body(call, engine)

    run_with_engine(root, main, **config)


def ok(response: HttpResponse) -> Any:
    assert response.status == 200, response.body
    return orjson.loads(response.body)


def err(response: HttpResponse, status: int) -> str:
    assert response.status == status, (response.status, response.body)
    message = orjson.loads(response.body)["error"]
    assert isinstance(message, str)
    return message


def test_extensions_named_as_triton_names_them() -> None:
    assert {"trace", "logging"} <= set(EXTENSIONS)


def test_trace_setting_routes(repo: Path, tmp_path: Path) -> None:
    trace_file = str(tmp_path / "t.json")

    async def body(call: Call, engine: Engine) -> None:
        initial = ok(await call("GET", "/v2/trace/setting"))
        assert initial == {
            "trace_level": ["OFF"],
            "trace_rate": "1000",
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_file": trace_file,
            "trace_mode": "triton",
        }
        assert ok(await call("GET", "/v2/models/add/trace/setting")) == initial
        update = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
        updated = ok(await call("POST", "/v2/models/add/trace/setting", update))
        assert updated == {**initial, "trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
        assert ok(await call("GET", "/v2/trace/setting"))["trace_level"] == ["OFF"]
        # The traced model's requests reach the file, with the HTTP app's stamps around them.
        x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        for _ in range(2):
            ok(await call("POST", "/v2/models/add/infer", x))
        ok(await call("POST", "/v2/models/echo/infer", _echo()))  # global setting: OFF
        assert engine.tracer.writer.flush()
        records = orjson.loads(Path(trace_file).read_bytes())
        assert {r["model_name"] for r in records if "model_name" in r} == {"add"}
        first = records[0]["id"]
        names = [
            r["timestamps"][0]["name"] for r in records if r["id"] == first and "timestamps" in r
        ]
        assert names[0] == "HTTP_RECV_END" and names[-1] == "HTTP_SEND_START"
        assert names[1:-1][0] == "REQUEST_START" and names[1:-1][-1] == "REQUEST_END"
        # null clears the model's field: it follows the global setting again.
        clear = {"trace_level": None, "trace_rate": None}
        cleared = ok(await call("POST", "/v2/models/add/trace/setting", clear))
        assert cleared == initial

    with_app(repo, body, trace_file=trace_file, trace_rate=1000)


def test_trace_rate_counts_each_http_request_once(repo: Path, tmp_path: Path) -> None:
    """The HTTP app samples a request; the engine must not sample it a second time (a
    request the app passed over used to be sampled again by the engine, so rate 2 traced
    every request, half of them without the HTTP stamps)."""
    trace_file = str(tmp_path / "t.json")

    async def body(call: Call, engine: Engine) -> None:
        update = {"trace_level": ["TIMESTAMPS"], "trace_rate": "2"}
        ok(await call("POST", "/v2/trace/setting", update))
        x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        for _ in range(6):
            ok(await call("POST", "/v2/models/add/infer", x))
        assert engine.tracer.writer.flush()
        records = orjson.loads(Path(trace_file).read_bytes())
        headers = [r for r in records if "model_name" in r]
        assert len(headers) == 3
        for header in headers:
            names = [
                r["timestamps"][0]["name"]
                for r in records
                if r["id"] == header["id"] and "timestamps" in r
            ]
            assert names[0] == "HTTP_RECV_END" and names[-1] == "HTTP_SEND_START"

    with_app(repo, body, trace_file=trace_file)


def _echo() -> dict[str, Any]:
    return {"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}]}


def test_trace_setting_errors(repo: Path, tmp_path: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        message = err(await call("GET", "/v2/models/nope/trace/setting"), 400)
        assert message == "Request for unknown model : nope"
        message = err(await call("POST", "/v2/trace/setting", {"trace_file": "/etc/x"}), 400)
        assert message == "trace file location can not be updated through network protocol"
        message = err(await call("POST", "/v2/trace/setting", {"trace_rate": "x"}), 400)
        assert message == "Unable to parse 'trace_rate', got: x"
        assert err(await call("POST", "/v2/trace/setting", b"[1]"), 400)
        assert err(await call("POST", "/v2/trace/setting", b"{"), 400).startswith("malformed JSON")
        assert err(await call("PUT", "/v2/trace/setting"), 400)
        message = err(await call("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}), 400)
        assert message.endswith("trace file name is not given")

    with_app(repo, body)


def test_logging_routes(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs = LogControl(LogSettings(), logger="fptest.http")

    async def body(call: Call, engine: Engine) -> None:
        assert ok(await call("GET", "/v2/logging")) == {
            "log_file": "",
            "log_info": True,
            "log_warning": True,
            "log_error": True,
            "log_verbose_level": 0,
            "log_format": "default",
        }
        logging.getLogger("fptest.http").debug("before")
        updated = ok(await call("POST", "/v2/logging", {"log_verbose_level": 1}))
        assert updated["log_verbose_level"] == 1 and updated["log_info"] is True
        logging.getLogger("fptest.http").debug("after")
        message = err(await call("POST", "/v2/logging", {"log_format": "xml"}), 400)
        assert message == "invalid argument for --log_format, got: xml"
        assert ok(await call("GET", "/v2/logging"))["log_format"] == "default"

    try:
        with_app(repo, body, logs=logs)
    finally:
        logs.close()
    assert "after" in stream.getvalue() and "before" not in stream.getvalue()


def test_logging_without_a_log_control_is_503(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        message = err(await call("GET", "/v2/logging"), 503)
        assert message == "the server does not support dynamic logging"

    with_app(repo, body)


def test_untraced_infer_unchanged(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        assert not engine.tracer.active
        out = ok(await call("POST", "/v2/models/echo/infer", _echo()))
        assert np.array(out["outputs"][0]["data"]).tolist() == [1, 2]

    with_app(repo, body)
