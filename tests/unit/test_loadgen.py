"""The load generator: request synthesis, encoding, statistics, and its HTTP client.

The client is driven against a small stdlib ``http.server`` stub that speaks just enough of the
V2 protocol (metadata, config, infer), so these tests do not depend on forwardpass's server.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

from forwardpass import loadgen
from forwardpass.cli.bench import bench
from forwardpass.datatypes import DataType, deserialize_bytes_tensor
from forwardpass.errors import InvalidArgument, NotFound, Unavailable

# --------------------------------------------------------------------------- the V2 stub

_MODELS: dict[str, dict[str, Any]] = {
    "tiny": {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
        "max_batch_size": 8,
    },
    "nobatch": {
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [-1, 4]}],
        "max_batch_size": 0,
    },
    # No /config on this one: the client must fall back to the metadata alone.
    "multi": {
        "inputs": [
            {"name": "tokens", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1, -1]},
            {"name": "text", "datatype": "BYTES", "shape": [-1, 1]},
        ],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
        "max_batch_size": None,
    },
    # Rejects every request, as a server does with an input it cannot take.
    "rejects": {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}],
        "max_batch_size": 4,
    },
    # Accepts the first request (the probe), then fails every other one.
    "flaky": {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}],
        "max_batch_size": 4,
    },
}


def _validate(model: dict[str, Any], request: dict[str, Any], blobs: bytes | None) -> str:
    """Check a request against the model the way a server would; '' when it is valid."""
    specs = {t["name"]: t for t in model["inputs"]}
    offset = 0
    for tensor in request["inputs"]:
        spec = specs.pop(tensor["name"], None)
        if spec is None:
            return f"unexpected input {tensor['name']}"
        if tensor["datatype"] != spec["datatype"]:
            return f"{tensor['name']}: datatype {tensor['datatype']}"
        shape = tensor["shape"]
        if len(shape) != len(spec["shape"]) or any(
            d != -1 and d != s for d, s in zip(spec["shape"], shape, strict=True)
        ):
            return f"{tensor['name']}: shape {shape}"
        count = math.prod(shape)
        if blobs is not None:
            size = tensor["parameters"]["binary_data_size"]
            blob = blobs[offset : offset + size]
            offset += size
            if spec["datatype"] == "BYTES":
                deserialize_bytes_tensor(blob, count)
            elif size != count * DataType.parse(spec["datatype"]).itemsize:
                return f"{tensor['name']}: {size} bytes"
        elif len(np.asarray(tensor["data"]).reshape(-1)) != count:
            return f"{tensor['name']}: {len(tensor['data'])} values"
    if specs:
        return f"missing inputs {sorted(specs)}"
    if blobs is not None and offset != len(blobs):
        return "trailing binary data"
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK would add 40 ms to every response.
    disable_nagle_algorithm = True
    seen: ClassVar[list[dict[str, Any]]] = []
    flaky_count: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _model(self) -> tuple[str, dict[str, Any] | None, list[str]]:
        parts = self.path.strip("/").split("/")
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            return "", None, []
        return parts[2], _MODELS.get(parts[2]), parts[3:]

    def do_GET(self) -> None:
        name, model, rest = self._model()
        if model is None:
            self._reply(404, {"error": f"unknown model {name}"})
        elif not rest:
            meta = {"name": name, "versions": ["1"], "platform": "stub"}
            meta.update(inputs=model["inputs"], outputs=model["outputs"])
            self._reply(200, meta)
        elif rest == ["config"] and model["max_batch_size"] is not None:
            self._reply(200, {"name": name, "max_batch_size": model["max_batch_size"]})
        else:
            self._reply(404, {"error": "no such route"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        name, model, rest = self._model()
        if model is None or rest != ["infer"]:
            self._reply(404, {"error": "not found"})
            return
        header_length = self.headers.get("Inference-Header-Content-Length")
        if header_length is None:
            request, blobs = json.loads(body), None
        else:
            request = json.loads(body[: int(header_length)])
            blobs = body[int(header_length) :]
        with self.lock:
            self.seen.append(
                {"model": name, "request": request, "binary": blobs is not None, "path": self.path}
            )
            if name == "flaky":
                type(self).flaky_count += 1
                if self.flaky_count > 1 and self.flaky_count % 2 == 0:
                    self._reply(500, {"error": "flaky model failed"})
                    return
        problem = "input 'input' is not acceptable" if name == "rejects" else ""
        problem = problem or _validate(model, request, blobs)
        if problem:
            self._reply(400, {"error": problem})
            return
        outputs = [
            {"name": t["name"], "datatype": t["datatype"], "shape": [1, *t["shape"][1:]]}
            for t in model["outputs"]
        ]
        self._reply(200, {"model_name": name, "outputs": outputs})


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _reset_stub() -> None:
    _Handler.seen.clear()
    _Handler.flaky_count = 0


def _quick(url: str, model: str, **kwargs: Any) -> loadgen.LoadConfig:
    kwargs.setdefault("concurrency", (1, 4))
    return loadgen.LoadConfig(model=model, url=url, duration=0.3, warmup=0.05, **kwargs)


# --------------------------------------------------------------------------- synthesis


def _info(inputs: list[tuple[str, str, list[int]]], max_batch_size: int) -> loadgen.ModelInfo:
    meta = {"name": "m", "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs]}
    return loadgen.ModelInfo.from_json(meta, {"max_batch_size": max_batch_size})


def test_batching_model_gets_batch_one_and_fixed_dims() -> None:
    info = _info([("input", "FP32", [-1, 64])], max_batch_size=8)
    assert info.batches
    datatype, array = loadgen.synthesize_inputs(info)["input"]
    assert datatype is DataType.FP32
    assert array.shape == (1, 64) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() < 1.0
    # Deterministic for a given seed.
    again = loadgen.synthesize_inputs(info)["input"][1]
    np.testing.assert_array_equal(array, again)


def test_batch_size_and_shape_override_exclude_the_batch_dim() -> None:
    info = _info([("tokens", "INT64", [-1, -1]), ("image", "UINT8", [-1, 3, -1, -1])], 16)
    inputs = loadgen.synthesize_inputs(info, {"image": (3, 32, 48)}, batch_size=4)
    assert inputs["tokens"][1].shape == (4, 1)  # other variable dims default to 1
    assert inputs["image"][1].shape == (4, 3, 32, 48)
    assert inputs["image"][1].dtype == np.uint8


def test_non_batching_model_resolves_the_full_shape() -> None:
    info = _info([("x", "INT32", [-1, 4])], max_batch_size=0)
    assert not info.batches
    assert loadgen.synthesize_inputs(info)["x"][1].shape == (1, 4)
    assert loadgen.synthesize_inputs(info, {"x": (5, 4)})["x"][1].shape == (5, 4)
    with pytest.raises(InvalidArgument, match="does not batch"):
        loadgen.synthesize_inputs(info, batch_size=2)


def test_bad_overrides_are_rejected() -> None:
    info = _info([("image", "FP32", [-1, 3, -1])], 8)
    with pytest.raises(InvalidArgument, match="does not fit"):
        loadgen.synthesize_inputs(info, {"image": (4, 10)})  # 4 contradicts the fixed 3
    with pytest.raises(InvalidArgument, match="does not fit"):
        loadgen.synthesize_inputs(info, {"image": (3,)})
    with pytest.raises(InvalidArgument, match="unknown input"):
        loadgen.synthesize_inputs(info, {"other": (1,)})


def test_parse_shape_overrides() -> None:
    assert loadgen.parse_shape_overrides(["a:1,2", "b:3"]) == {"a": (1, 2), "b": (3,)}
    for bad in ("a", "a:", ":1", "a:x", "a:0"):
        with pytest.raises(InvalidArgument):
            loadgen.parse_shape_overrides([bad])


def test_metadata_without_config_infers_batching_from_the_leading_dim() -> None:
    meta = {"name": "m", "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 2]}]}
    assert loadgen.ModelInfo.from_json(meta, None).batches
    meta["inputs"][0]["shape"] = [3, 2]
    assert not loadgen.ModelInfo.from_json(meta, None).batches
    with pytest.raises(InvalidArgument):
        loadgen.ModelInfo.from_json({"name": "m", "inputs": []}, None)


def test_json_encoding() -> None:
    inputs = {
        "a": (DataType.FP32, np.array([[0.5, 1.5]], np.float32)),
        "s": (DataType.BYTES, np.array([[b"hi"]], dtype=object)),
    }
    encoded = loadgen.encode_infer_request(inputs, ["out"], binary=False)
    assert ("Content-Type", "application/json") in encoded.headers
    body = json.loads(encoded.body)
    assert "outputs" not in body  # all outputs, as JSON
    assert body["inputs"] == [
        {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.5]},
        {"name": "s", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]},
    ]


def test_binary_encoding_layout() -> None:
    a = np.arange(6, dtype=np.float32).reshape(1, 6)
    s = np.array([[b"abc"]], dtype=object)
    encoded = loadgen.encode_infer_request(
        {"a": (DataType.FP32, a), "s": (DataType.BYTES, s)}, ["y"], binary=True
    )
    headers = dict(encoded.headers)
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(encoded.body[:length])
    assert header["outputs"] == [{"name": "y", "parameters": {"binary_data": True}}]
    sizes = [t["parameters"]["binary_data_size"] for t in header["inputs"]]
    assert sizes == [24, 4 + 3]
    assert all("data" not in t for t in header["inputs"])
    blobs = encoded.body[length:]
    np.testing.assert_array_equal(np.frombuffer(blobs[:24], "<f4").reshape(1, 6), a)
    assert blobs[24:] == b"\x03\x00\x00\x00abc"


# --------------------------------------------------------------------------- statistics


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 90) == 90.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile(values, 100) == 100.0
    assert loadgen.percentile(values, 0) == 1.0
    assert loadgen.percentile([7.0], 99) == 7.0
    assert loadgen.percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert math.isnan(loadgen.percentile([], 50))
    with pytest.raises(ValueError):
        loadgen.percentile(values, 101)


def test_summarize_converts_to_ms_and_rates() -> None:
    latencies = [0.004, 0.001, 0.003, 0.002]  # unsorted on purpose
    result = loadgen.summarize(8, latencies, errors=2, window_s=2.0, batch_size=4)
    assert result.requests == 4 and result.errors == 2
    assert result.request_rate == pytest.approx(2.0)
    assert result.throughput == pytest.approx(8.0)
    assert result.p50_ms == pytest.approx(2.0)
    assert result.p99_ms == pytest.approx(4.0)
    assert result.max_ms == pytest.approx(4.0)
    assert result.mean_ms == pytest.approx(2.5)
    empty = loadgen.summarize(1, [], errors=3, window_s=1.0).to_dict()
    assert empty["latency_ms"]["p50"] is None and empty["errors"] == 3


def test_endpoint_parsing() -> None:
    endpoint = loadgen.Endpoint.parse("http://localhost:8123/prefix/")
    assert (endpoint.host, endpoint.port, endpoint.prefix) == ("localhost", 8123, "/prefix")
    assert endpoint.host_header == "localhost:8123"
    assert endpoint.model_path("m", "2") == "/prefix/v2/models/m/versions/2"
    assert loadgen.Endpoint.parse("127.0.0.1:9000").port == 9000
    with pytest.raises(Exception, match="only http"):
        loadgen.Endpoint.parse("https://example.com")


# --------------------------------------------------------------------------- against the stub


def test_run_json_against_stub(stub_url: str) -> None:
    report = loadgen.run(_quick(stub_url, "tiny"))
    assert [r.concurrency for r in report.results] == [1, 4]
    for r in report.results:
        assert r.errors == 0 and r.first_error == ""
        assert r.requests > 10
        assert r.throughput == pytest.approx(r.requests / r.duration_s)
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert report.input_shapes == {"input": [1, 64]}
    assert report.encoding == "json"
    seen = _Handler.seen
    # The probe plus every measured and warm-up request reached the server, all valid JSON.
    assert len(seen) >= 1 + sum(r.requests for r in report.results)
    assert all(not s["binary"] and s["path"] == "/v2/models/tiny/infer" for s in seen)
    assert seen[0]["request"]["inputs"][0]["shape"] == [1, 64]


def test_run_binary_with_mixed_types_and_no_config(stub_url: str) -> None:
    config = _quick(stub_url, "multi", binary=True, concurrency=(2,), shapes={"tokens": (16,)})
    config = loadgen.LoadConfig(**{**_asdict(config), "shapes": {"tokens": (16,), "mask": (16,)}})
    report = loadgen.run(config)
    assert report.errors == 0 and report.results[0].requests > 0
    assert report.input_shapes == {"tokens": [1, 16], "mask": [1, 16], "text": [1, 1]}
    request = _Handler.seen[0]
    assert request["binary"]
    assert request["request"]["outputs"] == [{"name": "score", "parameters": {"binary_data": True}}]


def _asdict(config: loadgen.LoadConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_errors_are_counted_and_the_first_one_kept(stub_url: str) -> None:
    report = loadgen.run(_quick(stub_url, "flaky", concurrency=(1,)))
    result = report.results[0]
    assert result.requests > 0 and result.errors > 0
    assert abs(result.requests - result.errors) <= 1  # every other request fails
    assert result.first_error == "HTTP 500: flaky model failed"


def test_rejected_request_and_unknown_model_fail_fast(stub_url: str) -> None:
    with pytest.raises(InvalidArgument, match=r"rejected .*HTTP 400.*'input' is not acceptable"):
        loadgen.run(_quick(stub_url, "rejects"))
    assert len(_Handler.seen) == 1  # the probe only: no run of failing requests
    with pytest.raises(NotFound, match="unknown model missing"):
        loadgen.run(_quick(stub_url, "missing"))


def test_unreachable_server() -> None:
    with pytest.raises(Unavailable, match="cannot connect"):
        loadgen.run(loadgen.LoadConfig(model="tiny", url="http://127.0.0.1:9", duration=0.1))


def test_bench_cli_json(stub_url: str) -> None:
    result = CliRunner().invoke(
        bench,
        ["tiny", "--url", stub_url, "-c", "2", "-d", "0.3", "--warmup", "0.05", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "tiny" and report["encoding"] == "json"
    (level,) = report["results"]
    assert level["concurrency"] == 2 and level["errors"] == 0 and level["requests"] > 0
    assert set(level["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}


def test_bench_cli_table_and_error_exit(stub_url: str) -> None:
    quick = ["-c", "1", "-d", "0.2", "--warmup", "0.05"]
    ok = CliRunner().invoke(bench, ["nobatch", "--url", stub_url, *quick, "--binary"])
    assert ok.exit_code == 0, ok.output
    assert "infer/s" in ok.output and "binary" in ok.output
    assert _Handler.seen[0]["request"]["inputs"][0]["shape"] == [1, 4]
    flaky = CliRunner().invoke(bench, ["flaky", "--url", stub_url, *quick])
    assert flaky.exit_code == 1
    assert "first error: HTTP 500: flaky model failed" in flaky.output
    bad = CliRunner().invoke(bench, ["tiny", "--url", stub_url, "-c", "0"])
    assert bad.exit_code == 2
