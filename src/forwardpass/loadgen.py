"""A closed-loop load generator for Open Inference Protocol (KServe V2) HTTP servers.

It measures a server the way Triton's ``perf_analyzer`` does: ``C`` workers each send one
inference request, wait for its response, and send the next, for ``duration`` seconds after a
``warmup``; every concurrency level gets fresh connections and its own warm-up. Throughput is
the number of successful responses that complete inside the measurement window divided by its
length; latency is measured per request from the first byte written to the last byte read.

The client must cost far less than the server it measures, so each worker owns one keep-alive
HTTP/1.1 connection driven by an :class:`asyncio.Protocol` with ``httptools`` response parsing,
the request bytes (headers and body) are encoded once, and the event loop is uvloop when it is
installed. Response bodies are only kept for errors. Nothing here imports numpy at module load
time except what the request synthesis needs.

Request synthesis follows the model's metadata (``GET /v2/models/{name}``) and configuration
(``GET /v2/models/{name}/config``): when the model batches (``max_batch_size > 0`` and a
variable leading dimension) the leading dimension is the batch size (1 by default); every
other variable dimension comes from a ``--shape name:d1,d2`` override (the shape without the
batch dimension, as perf_analyzer's ``--shape``) or is 1. JSON is the default encoding; the
binary tensor extension (``Inference-Header-Content-Length``) is one flag away.

Errors are the project's own (:mod:`forwardpass.errors`): an unreachable server is
:class:`Unavailable`, an unknown model :class:`NotFound`, a bad option :class:`InvalidArgument`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httptools
import numpy as np
import orjson

from forwardpass.datatypes import DataType, bf16_from_float32, serialize_bytes_tensor
from forwardpass.errors import (
    ForwardpassError,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)

__all__ = [
    "BenchReport",
    "EncodedRequest",
    "Endpoint",
    "LevelResult",
    "LoadConfig",
    "ModelInfo",
    "TensorInfo",
    "encode_infer_request",
    "fetch_model_info",
    "parse_shape_overrides",
    "percentile",
    "run",
    "run_async",
    "summarize",
    "synthesize_inputs",
]

_CLOCK = time.perf_counter


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """What to measure and how hard to push."""

    model: str
    url: str = "http://127.0.0.1:8000"
    version: str = ""
    concurrency: tuple[int, ...] = (1, 8, 32)
    duration: float = 5.0
    warmup: float = 1.0
    binary: bool = False
    batch_size: int = 1
    #: Shapes without the batch dimension for the inputs with variable dimensions.
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: How long a single request may take before the run gives up on it (seconds).
    timeout: float = 30.0
    seed: int = 0
    #: perf_analyzer-style real inputs (see :mod:`forwardpass.bench_inputs`); empty: synthesize.
    input_data: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise InvalidArgument("concurrency levels must be integers >= 1")
        if self.duration <= 0 or self.warmup < 0 or self.timeout <= 0:
            raise InvalidArgument("duration and timeout must be > 0, warmup >= 0")
        if self.batch_size < 1:
            raise InvalidArgument("batch size must be >= 1")


def parse_shape_overrides(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["image:3,224,224", ...]`` → ``{"image": (3, 224, 224)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise InvalidArgument(f"bad --shape {item!r}: expected NAME:D1[,D2...] with D >= 1")
        shapes[name] = shape
    return shapes


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server listens, parsed once from the ``--url``."""

    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http":
            raise Unsupported(f"only http:// URLs are supported, not {parts.scheme}://")
        if not parts.hostname:
            raise InvalidArgument(f"no host in URL {url!r}")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise InvalidArgument(f"bad port in URL {url!r}") from exc
        return cls(parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    def model_path(self, model: str, version: str = "") -> str:
        path = f"{self.prefix}/v2/models/{quote(model, safe='')}"
        return f"{path}/versions/{quote(version, safe='')}" if version else path


# --------------------------------------------------------------------------- model and inputs


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output as the model metadata describes it (-1 = variable)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the load generator needs to know about the model."""

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int
    #: Client input name → (kind, declaration) of the model's declared processing.
    processed: Mapping[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    #: The configuration as the server sent it (None without the extension).
    config: Mapping[str, Any] | None = None

    @property
    def batches(self) -> bool:
        """Whether requests carry a batch dimension the server may merge."""
        return self.max_batch_size > 0 and all(t.shape[:1] == (-1,) for t in self.inputs)

    @classmethod
    def from_json(cls, metadata: Mapping[str, Any], config: Mapping[str, Any] | None) -> ModelInfo:
        """Build from the metadata and (when the server has it) configuration responses."""

        def tensors(key: str) -> tuple[TensorInfo, ...]:
            try:
                return tuple(
                    TensorInfo(
                        str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])
                    )
                    for t in metadata.get(key, [])
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidArgument(f"malformed model metadata {key}: {exc}") from exc

        inputs = tensors("inputs")
        if not inputs:
            raise InvalidArgument("the model metadata lists no inputs")
        if config is not None:
            max_batch_size = int(config.get("max_batch_size", 0) or 0)
        else:
            # No configuration extension: a variable leading dim on every input is the best
            # evidence of a batch dimension there is.
            max_batch_size = 1 if all(t.shape[:1] == (-1,) for t in inputs) else 0
        from forwardpass.bench_inputs import processed_kinds

        return cls(
            str(metadata.get("name", "")),
            inputs,
            tensors("outputs"),
            max_batch_size,
            processed_kinds(config),
            config,
        )


def _input_shape(
    tensor: TensorInfo, batching: bool, batch_size: int, override: tuple[int, ...] | None
) -> tuple[int, ...]:
    dims = tensor.shape[1:] if batching else tensor.shape
    if override is not None:
        if len(override) != len(dims) or any(
            d != -1 and d != o for d, o in zip(dims, override, strict=True)
        ):
            raise InvalidArgument(
                f"--shape {tensor.name}:{','.join(map(str, override))} does not fit the "
                f"model's shape {list(dims)}" + (" (batch dimension excluded)" if batching else "")
            )
        dims = override
    shape = tuple(1 if d == -1 else d for d in dims)
    return (batch_size, *shape) if batching else shape


def synthesize_inputs(
    info: ModelInfo,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 1,
    seed: int = 0,
) -> dict[str, tuple[DataType, np.ndarray]]:
    """Valid random inputs for every model input: ``name → (datatype, array)``.

    Floats are uniform in [0, 1), integers in [0, 10), booleans random, BYTES short strings;
    a BYTES input the model's processing reads as an image, text or audio gets a real encoded
    picture (PNG), a sentence or a WAV clip (see :mod:`forwardpass.bench_inputs`).
    """
    from forwardpass.bench_inputs import synthesize_processed

    shapes = shapes or {}
    unknown = set(shapes) - {t.name for t in info.inputs}
    if unknown:
        raise InvalidArgument(f"--shape names unknown input(s): {', '.join(sorted(unknown))}")
    if batch_size != 1 and not info.batches:
        raise InvalidArgument(f"model {info.name!r} does not batch; use batch size 1")
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[DataType, np.ndarray]] = {}
    for tensor in info.inputs:
        datatype = DataType.parse(tensor.datatype)
        shape = _input_shape(tensor, info.batches, batch_size, shapes.get(tensor.name))
        if datatype is DataType.BYTES:
            kind, item = info.processed.get(tensor.name, ("", {}))
            element = synthesize_processed(kind, item, info.config, seed) or b"forwardpass"
            array = np.empty(shape, dtype=object)
            array.reshape(-1)[:] = [element] * math.prod(shape)
        elif datatype is DataType.BF16:
            array = bf16_from_float32(rng.random(shape, dtype=np.float32))
        elif datatype.is_float:
            array = rng.random(shape, dtype=np.float32).astype(datatype.numpy)
        elif datatype is DataType.BOOL:
            array = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            array = rng.integers(0, 10, shape).astype(datatype.numpy)
        out[tensor.name] = (datatype, array)
    return out


def _json_data(datatype: DataType, array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if datatype is DataType.BYTES:
        return [bytes(v).decode("utf-8") for v in flat]
    if datatype is DataType.BF16:
        from forwardpass.datatypes import bf16_to_float32

        return bf16_to_float32(flat).tolist()
    return flat.tolist()


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """An inference request body and the headers it needs, encoded once."""

    body: bytes
    headers: tuple[tuple[str, str], ...]


def encode_infer_request(
    inputs: Mapping[str, tuple[DataType, np.ndarray]],
    outputs: Sequence[str] = (),
    binary: bool = False,
) -> EncodedRequest:
    """The V2 request for ``inputs``: JSON, or JSON header + binary blobs.

    With ``binary`` every input travels as raw little-endian bytes (``binary_data_size``) and
    every named output is asked for as binary (``binary_data``); without it the outputs are
    left out, which asks for all of them as JSON.
    """
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, (datatype, array) in inputs.items():
        tensor: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype.value,
        }
        if binary:
            if datatype is DataType.BYTES:
                blob = serialize_bytes_tensor(array)
            else:
                blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            try:
                tensor["data"] = _json_data(datatype, array)
            except UnicodeDecodeError:
                # A JSON string holds text only; mangling the bytes would only measure the
                # server's error path.
                raise InvalidArgument(
                    f"input {name} holds binary data (e.g. an encoded image), which a JSON "
                    "request cannot carry: add --binary (the binary tensor extension)"
                ) from None
        tensors.append(tensor)
    request: dict[str, Any] = {"inputs": tensors}
    if binary and outputs:
        request["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    header = orjson.dumps(request)
    if not binary:
        return EncodedRequest(header, (("Content-Type", "application/json"),))
    return EncodedRequest(
        header + b"".join(blobs),
        (
            ("Content-Type", "application/octet-stream"),
            ("Inference-Header-Content-Length", str(len(header))),
        ),
    )


def _http_request(
    method: str,
    path: str,
    endpoint: Endpoint,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host_header}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- HTTP client


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, keep_ok_body: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._body: list[bytes] = []
        self._keep_body = False
        self._keep_ok_body = keep_ok_body
        self.usable = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.usable = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._fail(ConnectionError(f"connection closed by the server ({exc or 'EOF'})"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_body = self._keep_ok_body or self._status != 200
        self._body = []

    def on_body(self, body: bytes) -> None:
        if self._keep_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send pre-encoded request bytes; the future gives (status, body)."""
        if not self.usable or self._transport is None:
            raise ConnectionError("connection is closed")
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._transport.write(data)
        return waiter

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()


async def _connect(endpoint: Endpoint, keep_ok_body: bool = False) -> _Connection:
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(
            lambda: _Connection(keep_ok_body), endpoint.host, endpoint.port
        )
    except OSError as exc:
        raise Unavailable(
            f"cannot connect to {endpoint.host}:{endpoint.port}: {exc.strerror or exc}"
        ) from exc
    return conn


async def _fetch(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> tuple[int, bytes]:
    """One request on its own connection (metadata, config, the probe)."""
    conn = await _connect(endpoint, keep_ok_body=True)
    try:
        return await asyncio.wait_for(
            conn.request(_http_request(method, path, endpoint, body, headers)), 30.0
        )
    except (ConnectionError, TimeoutError) as exc:
        raise Unavailable(f"{method} {path}: {exc}") from exc
    finally:
        conn.close()


def _error_message(body: bytes) -> str:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")[:500]
    if isinstance(decoded, dict) and "error" in decoded:
        return str(decoded["error"])
    return body.decode("utf-8", "replace")[:500]


async def fetch_model_info(endpoint: Endpoint, model: str, version: str = "") -> ModelInfo:
    """Read the model's metadata and, if the server offers it, its configuration."""
    path = endpoint.model_path(model, version)
    status, body = await _fetch(endpoint, "GET", path)
    if status == 404:
        raise NotFound(f"model {model!r} not found on the server: {_error_message(body)}")
    if status != 200:
        raise Unavailable(f"GET {path} answered {status}: {_error_message(body)}")
    metadata = orjson.loads(body)
    status, body = await _fetch(endpoint, "GET", f"{path}/config")
    config = orjson.loads(body) if status == 200 else None
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        config = config["config"]  # KServe-style servers wrap it
    return ModelInfo.from_json(metadata, config)


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in [0, 100]); NaN if empty.

    Nearest rank (as perf_analyzer reports) always returns an observed latency, never an
    interpolation between two.
    """
    if not sorted_values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside [0, 100]")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True, slots=True)
class LevelResult:
    """The outcome of one concurrency level. Latencies are in milliseconds."""

    concurrency: int
    duration_s: float
    requests: int
    errors: int
    throughput: float  # inferences per second (requests x batch size)
    request_rate: float  # successful requests per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    first_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "errors": self.errors,
            "throughput_infer_per_s": round(self.throughput, 2),
            "request_rate_per_s": round(self.request_rate, 2),
            "latency_ms": {
                "p50": _round(self.p50_ms),
                "p90": _round(self.p90_ms),
                "p99": _round(self.p99_ms),
                "max": _round(self.max_ms),
                "mean": _round(self.mean_ms),
            },
            "first_error": self.first_error or None,
        }


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def summarize(
    concurrency: int,
    latencies_s: Sequence[float],
    errors: int,
    window_s: float,
    batch_size: int = 1,
    first_error: str = "",
) -> LevelResult:
    """Turn the raw per-request latencies (seconds) of one level into its figures."""
    ordered = sorted(latencies_s)
    n = len(ordered)
    rate = n / window_s if window_s > 0 else 0.0
    ms = 1e3
    return LevelResult(
        concurrency=concurrency,
        duration_s=window_s,
        requests=n,
        errors=errors,
        throughput=rate * batch_size,
        request_rate=rate,
        p50_ms=percentile(ordered, 50) * ms,
        p90_ms=percentile(ordered, 90) * ms,
        p99_ms=percentile(ordered, 99) * ms,
        max_ms=(ordered[-1] * ms) if n else math.nan,
        mean_ms=(sum(ordered) / n * ms) if n else math.nan,
        first_error=first_error,
    )


@dataclass(frozen=True, slots=True)
class BenchReport:
    """Everything one ``forwardpass bench`` run measured."""

    model: str
    url: str
    encoding: str
    batch_size: int
    input_shapes: dict[str, list[int]]
    request_bytes: int
    event_loop: str
    results: tuple[LevelResult, ...]

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "url": self.url,
            "encoding": self.encoding,
            "batch_size": self.batch_size,
            "input_shapes": self.input_shapes,
            "request_bytes": self.request_bytes,
            "event_loop": self.event_loop,
            "results": [r.to_dict() for r in self.results],
        }


# --------------------------------------------------------------------------- the closed loop


@dataclass(slots=True)
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


async def _worker(
    endpoint: Endpoint,
    requests: Sequence[bytes],
    first: int,
    window_start: float,
    window_end: float,
    tally: _Tally,
) -> None:
    """Send, wait, repeat until ``window_end``; record what completes inside the window."""
    conn: _Connection | None = None
    latencies = tally.latencies
    clock = _CLOCK
    sent = first  # workers start on different steps of the input data, then take turns
    try:
        while True:
            request = requests[sent % len(requests)]
            sent += 1
            start = clock()
            if start >= window_end:
                return
            try:
                if conn is None or not conn.usable:
                    conn = await _connect(endpoint)
                    start = clock()
                status, body = await conn.request(request)
            except (ConnectionError, Unavailable) as exc:
                status, body = 0, str(exc).encode()
            end = clock()
            if status == 200:
                if window_start <= end <= window_end:
                    latencies.append(end - start)
                continue
            if window_start <= end <= window_end:
                tally.errors += 1
            if not tally.first_error:
                tally.first_error = (
                    f"HTTP {status}: {_error_message(body)}" if status else body.decode()
                )
            if status == 0:
                await asyncio.sleep(0.01)  # do not spin on a server that keeps hanging up
    finally:
        if conn is not None:
            conn.close()


async def _run_level(
    endpoint: Endpoint, requests: Sequence[bytes], concurrency: int, config: LoadConfig
) -> LevelResult:
    # Workers connect during the warm-up, so the window never includes a handshake.
    window_start = _CLOCK() + config.warmup
    window_end = window_start + config.duration
    tally = _Tally()
    tasks = [
        asyncio.create_task(_worker(endpoint, requests, i, window_start, window_end, tally))
        for i in range(concurrency)
    ]
    done, pending = await asyncio.wait(
        tasks, timeout=config.warmup + config.duration + config.timeout
    )
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        tally.errors += len(pending)
        tally.first_error = tally.first_error or (
            f"{len(pending)} request(s) got no response within {config.timeout:g} s"
        )
    for task in done:
        exc = task.exception()
        if exc is not None:
            raise exc
    return summarize(
        concurrency,
        tally.latencies,
        tally.errors,
        window_end - window_start,
        config.batch_size,
        tally.first_error,
    )


async def run_async(
    config: LoadConfig, on_level: Callable[[LevelResult], None] | None = None
) -> BenchReport:
    """Probe the model, then measure each concurrency level in turn."""
    endpoint = Endpoint.parse(config.url)
    info = await fetch_model_info(endpoint, config.model, config.version)
    if config.input_data:
        from forwardpass.bench_inputs import read_input_data

        if config.batch_size != 1 and not info.batches:
            raise InvalidArgument(f"model {info.name!r} does not batch; use batch size 1")
        steps = read_input_data(
            config.input_data,
            [(t.name, t.datatype, t.shape[1:] if info.batches else t.shape) for t in info.inputs],
            batching=info.batches,
            batch_size=config.batch_size,
        )
        what = "request from --input-data"
    else:
        steps = [synthesize_inputs(info, config.shapes, config.batch_size, config.seed)]
        what = "synthesized request"
    inputs = steps[0]
    path = endpoint.model_path(config.model, config.version) + "/infer"
    requests, sizes = [], []
    for i, step in enumerate(steps):
        encoded = encode_infer_request(step, [t.name for t in info.outputs], config.binary)
        # Each request once up front: one the server rejects fails loudly here, with the
        # server's own message, instead of producing a table of errors.
        status, body = await _fetch(endpoint, "POST", path, encoded.body, encoded.headers)
        if status != 200:
            step_name = f" (step {i})" if len(steps) > 1 else ""
            raise InvalidArgument(
                f"the server rejected the {what}{step_name} (HTTP {status}): {_error_message(body)}"
            )
        requests.append(_http_request("POST", path, endpoint, encoded.body, encoded.headers))
        sizes.append(len(encoded.body))
    results: list[LevelResult] = []
    for concurrency in config.concurrency:
        result = await _run_level(endpoint, requests, concurrency, config)
        results.append(result)
        if on_level is not None:
            on_level(result)
    return BenchReport(
        model=config.model,
        url=config.url,
        encoding="binary" if config.binary else "json",
        batch_size=config.batch_size,
        input_shapes={name: list(array.shape) for name, (_, array) in inputs.items()},
        request_bytes=round(sum(sizes) / len(sizes)),
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        results=tuple(results),
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(config: LoadConfig, on_level: Callable[[LevelResult], None] | None = None) -> BenchReport:
    """Run the benchmark on a fresh event loop (uvloop when installed)."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(run_async(config, on_level))
    except ForwardpassError:
        raise
    except orjson.JSONDecodeError as exc:
        raise Unavailable(f"the server answered with invalid JSON: {exc}") from exc
