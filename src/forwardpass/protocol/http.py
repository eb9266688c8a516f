"""The Open Inference Protocol (KServe V2) over HTTP, with Triton's extensions.

:class:`HttpApp` maps an :class:`HttpRequest` (method, path, headers, body) to an
:class:`HttpResponse`; it knows no socket, so tests drive it in-process and any server (the
fast one in ``protocol.server``, or an ASGI server through :func:`asgi_app`) can carry it.
Errors from the tree in ``forwardpass.errors`` become ``{"error": "..."}`` with their HTTP
status here and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from forwardpass import __version__
from forwardpass.access import AccessPolicy
from forwardpass.dashboard import Dashboard
from forwardpass.engine import Engine
from forwardpass.errors import (
    ForwardpassError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unsupported,
    http_status,
)
from forwardpass.monitor.logsettings import LogControl, parse_log_update
from forwardpass.monitor.trace import Trace, parse_trace_update
from forwardpass.protocol.codec import (
    SHM_DISABLED,
    decode_infer_request,
    encode_error,
    encode_infer_response,
)
from forwardpass.protocol.documents import (
    index_document,
    log_settings_document,
    metadata_document,
    server_document,
    statistics_document,
    trace_settings_document,
)
from forwardpass.protocol.generate import decode_generate, generate_document
from forwardpass.protocol.monitor_routes import (
    MONITOR_ACTIONS,
    monitor_document,
    monitor_route,
)
from forwardpass.protocol.shared_memory import SharedMemoryRegistry
from forwardpass.repository import config_to_dict
from forwardpass.repository.load_parameters import read_load_parameters

__all__ = ["EXTENSIONS", "HttpApp", "HttpRequest", "HttpResponse"]

log = logging.getLogger("forwardpass.http")

#: Reported in server metadata; each is implemented, not aspirational. A server that allows
#: client shared memory adds :data:`SHM_EXTENSION`.
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "logging",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "trace",
)

SHM_EXTENSION = "system_shared_memory"


def extensions(shared_memory: bool) -> list[str]:
    """What server metadata reports, on every protocol: :data:`EXTENSIONS`, and
    :data:`SHM_EXTENSION` where clients may use system shared memory."""
    return [*EXTENSIONS, SHM_EXTENSION] if shared_memory else list(EXTENSIONS)


JSON = "application/json"

#: The API group (Triton's --http-restricted-api names) of each /v2/models/<name>/<action>;
#: the model's metadata (no action) is "metadata".
_MODEL_GROUPS = {
    "infer": "inference",
    "generate": "inference",
    "generate_stream": "inference",
    "ready": "health",
    "config": "model-config",
    "stats": "statistics",
}


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    body: bytes = b""
    #: Lower-case header names.
    headers: dict[str, str] = field(default_factory=dict)
    #: The query string (after "?"), undecoded.
    query: str = ""


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: A streamed body (server-sent events), sent chunk by chunk instead of ``body``.
    stream: AsyncIterator[bytes] | None = None


_EMPTY_OK = HttpResponse(200, b"", "text/plain")


def _json(payload: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(payload))


def _parse_json(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


class HttpApp:
    """Routes V2 requests to an :class:`Engine`.

    ``shared_memory`` is the server's registry of client regions, or ``None`` when client
    shared memory is not allowed (then its routes and tensors answer 403).
    """

    def __init__(
        self,
        engine: Engine,
        metrics: Callable[[], bytes | Awaitable[bytes]] | None = None,
        max_request_bytes: int = 64 * 1024 * 1024,
        logs: LogControl | None = None,
        shared_memory: SharedMemoryRegistry | None = None,
        access: AccessPolicy | None = None,
        dashboard: bool = True,
    ) -> None:
        self.engine = engine
        #: The web page at ``/`` (static files; ``--no-dashboard``: ``/`` answers 404).
        self.dashboard = Dashboard() if dashboard else None
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.shared_memory = shared_memory
        self.extensions = extensions(shared_memory is not None)
        #: The logging extension's target; None where the process's logging is not ours.
        self.logs = logs
        self.access = access if access is not None and access.active else None
        # Imported here: the OpenAI routes build on this module's request and response.
        from forwardpass.protocol.openai import OpenAiApi

        self.openai = OpenAiApi(engine, self._allow, max_request_bytes)

    def _allow(self, group: str, request: HttpRequest) -> None:
        """Each route names its API group (Triton's); the access policy may refuse it."""
        if self.access is not None:
            self.access.check(group, request.headers)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/v1" or request.path.startswith("/v1/"):
            return await self.openai.handle(request)  # answers in OpenAI's error shape
        try:
            # Most routes answer at once; infer and the repository calls must be awaited.
            response = self._route(request)
            if isinstance(response, HttpResponse):
                return response
            return await response
        except Unauthenticated as exc:
            return HttpResponse(
                http_status(exc),
                encode_error(exc.message),
                headers=[("WWW-Authenticate", 'Bearer realm="forwardpass"')],
            )
        except ForwardpassError as exc:
            return HttpResponse(http_status(exc), encode_error(exc.message))
        except Exception as exc:  # a bug: answer 500, keep serving
            log.exception("unhandled error on %s %s", request.method, request.path)
            return HttpResponse(500, encode_error(f"internal error: {type(exc).__name__}: {exc}"))

    def _route(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        # Split first, then percent-decode each segment: tritonclient quotes model names, and
        # an encoded "/" (%2F) must stay inside its segment, never become a separator.
        parts = [unquote(p) for p in request.path.split("/") if p]
        method = request.method
        if self.dashboard is not None and (not parts or parts[0] in ("dashboard", "index.html")):
            return self._dashboard_file(method, request)
        if not parts:
            raise NotFound(f"no route for {method} {request.path}")
        if parts[0] == "metrics" and len(parts) == 1 and method == "GET" and self.metrics:
            return self._metrics(self.metrics)
        if parts[0] != "v2":
            raise NotFound(f"no route for {method} {request.path}")
        rest = parts[1:]
        if not rest:
            self._allow("metadata", request)
            self._method(method, "GET")
            return self._server_metadata()
        head = rest[0]
        if head == "health" and len(rest) == 2:
            self._allow("health", request)
            self._method(method, "GET")
            if rest[1] == "live":
                return _EMPTY_OK
            if rest[1] == "ready":
                if self.engine.ready:
                    return _EMPTY_OK
                raise Unavailable("server is not ready")
        elif head == "models":
            return self._models_route(method, rest[1:], request)
        elif head == "repository":
            self._allow("model-repository", request)
            return self._repository_route(method, rest[1:], request)
        elif head == "systemsharedmemory":
            self._allow("shared-memory", request)
            return self._shared_memory_route(method, rest[1:], request)
        elif head == "cudasharedmemory":
            self._allow("shared-memory", request)
            raise Unsupported(
                "CUDA shared memory is not supported on this server (it has no CUDA device "
                "support); use system shared memory (v2/systemsharedmemory)"
            )
        elif head == "trace" and rest[1:] == ["setting"]:
            self._allow("trace", request)
            return self._trace_setting(method, "", request)
        elif head == "logging" and len(rest) == 1:
            self._allow("logging", request)
            return self._logging(method, request)
        raise NotFound(f"no route for {method} {request.path}")

    def _dashboard_file(self, method: str, request: HttpRequest) -> HttpResponse:
        """A file of the dashboard page; 304 when the browser's copy is current."""
        assert self.dashboard is not None
        asset = self.dashboard.lookup(request.path)
        if asset is None:
            raise NotFound(f"no route for {method} {request.path}")
        self._method(method, "GET")
        if request.headers.get("if-none-match") == asset.etag:
            return HttpResponse(304, b"", asset.content_type, asset.headers())
        return HttpResponse(200, asset.body, asset.content_type, asset.headers())

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise InvalidArgument(f"method {method} is not allowed here; use {allowed}")

    # ------------------------------------------------------------------ /v2/models/...
    def _models_route(
        self, method: str, rest: list[str], request: HttpRequest
    ) -> HttpResponse | Awaitable[HttpResponse]:
        if rest == ["stats"]:
            self._allow("statistics", request)
            self._method(method, "GET")
            return self._statistics("", "")
        if not rest:
            raise NotFound("no route for /v2/models; name a model")
        name = rest[0]
        version = ""
        tail = rest[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version = tail[1]
            tail = tail[2:]
        action = tail[0] if len(tail) == 1 else ""
        if tail == ["trace", "setting"]:
            self._allow("trace", request)
            return self._trace_setting(method, name, request)
        if action in MONITOR_ACTIONS:
            allowed, group = MONITOR_ACTIONS[action]
            self._allow(group, request)
            self._method(method, allowed)
            return self._monitor(action, name, request)
        self._allow(_MODEL_GROUPS.get(action, "metadata"), request)
        if not tail:
            self._method(method, "GET")
            return _json(metadata_document(self.engine.metadata(name, version)))
        if action == "infer":
            self._method(method, "POST")
            if self.engine.tracer.active:
                return self._traced_infer(name, version, request)
            return self._infer(name, version, request, None)
        if action in ("generate", "generate_stream"):
            self._method(method, "POST")
            return self._generate(name, version, request, action == "generate_stream")
        if action == "ready":
            self._method(method, "GET")
            # version() raises 404 for an unknown model or version, 503 for one not ready.
            self.engine.version(name, version)
            return _EMPTY_OK
        if action == "config":
            self._method(method, "GET")
            return _json(config_to_dict(self.engine.model_config(name, version)))
        if action == "stats":
            self._method(method, "GET")
            return self._statistics(name, version)
        if action == "monitor":
            self._method(method, "GET")
            return self._drift_monitor(name, version)
        raise NotFound(f"no route for {method} {request.path}")

    async def _drift_monitor(self, name: str, version: str) -> HttpResponse:
        return _json(await monitor_document(self.engine, name, version))

    async def _monitor(self, action: str, name: str, request: HttpRequest) -> HttpResponse:
        body = _decompress(request, self.max_request_bytes)
        return _json(await monitor_route(self.engine, action, name, body, request.query))

    async def _traced_infer(self, name: str, version: str, request: HttpRequest) -> HttpResponse:
        """Infer while some scope traces: sample, stamp the HTTP side, finish the trace."""
        trace = self.engine.tracer.sample(name, request.headers)  # W3C traceparent (otel)
        if trace is None:
            return await self._infer(name, version, request, None)
        # The request is parsed off the socket by now: as close to RECV_END as the app can
        # see (the socket layer does not stamp RECV_START or SEND_END).
        trace.stamp("HTTP_RECV_END")
        try:
            return await self._infer(name, version, request, trace)
        except ForwardpassError as exc:
            trace.error = exc.message
            raise
        finally:
            trace.finish()

    async def _infer(
        self, name: str, version: str, request: HttpRequest, trace: Trace | None
    ) -> HttpResponse:
        body = _decompress(request, self.max_request_bytes)
        raw_length = request.headers.get("inference-header-content-length")
        header_length: int | None = None
        config = None
        if raw_length is not None:
            try:
                header_length = int(raw_length)
            except ValueError:
                raise InvalidArgument(
                    f"Inference-Header-Content-Length must be an integer, got {raw_length!r}"
                ) from None
            if header_length == 0:
                config = self.engine.model_config(name, version)
        leases = self.shared_memory.leases() if self.shared_memory is not None else None
        if "text/event-stream" in request.headers.get("accept", ""):
            return await self._infer_events(body, name, version, header_length, config, leases)
        try:
            infer_request = decode_infer_request(
                body,
                model_name=name,
                model_version=version,
                header_length=header_length,
                config=config,
                shared_memory=leases,
            )
            # The app samples every request while tracing is on: the engine must not again.
            response = await self.engine.infer(infer_request, trace, sampled=True)
            payload, json_length = encode_infer_response(response, infer_request, leases)
        finally:
            if leases is not None:
                leases.close()
        if trace is not None:
            trace.stamp("HTTP_SEND_START")
        if json_length is None:
            return HttpResponse(200, payload)
        return HttpResponse(
            200,
            payload,
            "application/octet-stream",
            [("Inference-Header-Content-Length", str(json_length))],
        )

    async def _infer_events(
        self,
        body: bytes,
        name: str,
        version: str,
        header_length: int | None,
        config: Any,
        leases: Any,
    ) -> HttpResponse:
        """``Accept: text/event-stream``: each response as one server-sent event.

        A decoupled model's 0..n responses stream as it sends them (any other model sends
        one). Each event is ``data: <the JSON inference response>``; an error after the first
        event is ``data: {"error": "..."}`` and ends the stream, as Triton's
        ``generate_stream`` does. Errors before the first response are plain HTTP errors.
        """
        try:
            infer_request = decode_infer_request(
                body,
                model_name=name,
                model_version=version,
                header_length=header_length,
                config=config,
                shared_memory=leases,
            )
            stream = self.engine.infer_stream(infer_request)
            try:
                first: Any = await anext(stream)
            except StopAsyncIteration:
                first = None
        except BaseException:
            if leases is not None:
                leases.close()
            raise

        def event(response: Any) -> bytes:
            payload, json_length = encode_infer_response(response, infer_request, leases)
            if json_length is not None:
                raise InvalidArgument("binary outputs cannot be streamed as events; ask for JSON")
            return b"data: " + payload + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            try:
                if first is None:
                    return
                yield event(first)
                async for response in stream:
                    yield event(response)
            except ForwardpassError as exc:
                yield b"data: " + encode_error(exc.message) + b"\n\n"
            finally:
                if leases is not None:
                    leases.close()

        return HttpResponse(
            200, b"", "text/event-stream", [("cache-control", "no-cache")], stream=events()
        )

    async def _generate(
        self, name: str, version: str, request: HttpRequest, stream: bool
    ) -> HttpResponse:
        """Triton's generate extension (see ``protocol.generate``)."""
        call = decode_generate(_decompress(request, self.max_request_bytes))
        generation = self.engine.generate(name, version, call.text, call.parameters, call.id)
        served = str(self.engine.version(name, version)[1].version)
        if not stream:
            try:
                result = await generation.collect()
            finally:
                generation.cancel()  # the client went away while waiting: free the slot
            finish = result.finish.value if result.finish else None
            return HttpResponse(200, generate_document(name, served, result.text, finish, call.id))

        async def events() -> AsyncIterator[bytes]:
            try:
                async for event in generation:
                    finish = event.finish.value if event.finish else None
                    if not event.text and finish is None:
                        continue  # text held back (a partial character or stop string)
                    payload = generate_document(name, served, event.text, finish, call.id)
                    yield b"data: " + payload + b"\n\n"
            except ForwardpassError as exc:
                yield b"data: " + encode_error(exc.message) + b"\n\n"
            finally:
                generation.cancel()  # no-op once finished; frees the slot otherwise

        return HttpResponse(
            200,
            b"",
            "text/event-stream; charset=utf-8",
            [("cache-control", "no-cache")],
            stream=events(),
        )

    # ------------------------------------------------------------------ /v2/repository/...
    async def _repository_route(
        self, method: str, rest: list[str], request: HttpRequest
    ) -> HttpResponse:
        self._method(method, "POST")
        body = _parse_json(request.body, "repository request")
        if rest == ["index"]:
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgument("'ready' must be true or false")
            return _json(index_document(self.engine.index(ready_only=ready)))
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            name = rest[1]
            params = body.get("parameters", {})
            if not isinstance(params, dict):
                raise InvalidArgument("'parameters' must be a JSON object")
            if rest[2] == "unload":
                if params.get("unload_dependents"):
                    log.info("unload_dependents ignored: forwardpass has no ensembles yet")
                await self.engine.unload(name)
                return _EMPTY_OK
            config, files = _load_parameters(params)
            await self.engine.load(name, config_override=config, files=files)
            return _EMPTY_OK
        raise NotFound(f"no route for {method} {request.path}")

    # ------------------------------------------------------------------ /v2/systemsharedmemory
    def _shared_memory_route(
        self, method: str, rest: list[str], request: HttpRequest
    ) -> HttpResponse | Awaitable[HttpResponse]:
        # [region/R/]status, region/R/register, [region/R/]unregister
        region = ""
        action = rest[0] if len(rest) == 1 else ""
        if len(rest) == 3 and rest[0] == "region":
            region, action = rest[1], rest[2]
        if action not in ("status", "register", "unregister") or (
            action == "register" and not region
        ):
            raise NotFound(f"no route for {method} {request.path}")
        registry = self.shared_memory
        if registry is None:
            raise PermissionDenied(SHM_DISABLED)
        if action == "status":
            self._method(method, "GET")
            return _json(
                [
                    {"name": s.name, "key": s.key, "offset": s.offset, "byte_size": s.byte_size}
                    for s in registry.status(region)
                ]
            )
        self._method(method, "POST")
        if action == "unregister":
            return _answer_empty(registry.unregister_shared(region))
        key, offset, byte_size = _register_body(_parse_json(request.body, "register request"))
        # Awaited: under --workers N every sibling registers it too, or none does.
        return _answer_empty(registry.register_shared(region, key, offset, byte_size))

    # ------------------------------------------------------------------ trace and logging
    def _trace_setting(
        self, method: str, model: str, request: HttpRequest
    ) -> HttpResponse | Awaitable[HttpResponse]:
        """Triton's trace extension: GET shows, POST updates (``null`` clears a field)."""
        if method not in ("GET", "POST"):
            raise InvalidArgument(f"method {method} is not allowed here; use GET or POST")
        if model and not self.engine.is_ready(model):
            raise InvalidArgument(f"Request for unknown model : {model}")
        tracer = self.engine.tracer
        if method == "POST":
            update = parse_trace_update(_parse_json(request.body, "trace setting request"))
            return self._shared(
                trace_settings_document(tracer.update(model, update)), "trace", model, update
            )
        return _json(trace_settings_document(tracer.settings(model)))

    def _logging(self, method: str, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        """Triton's logging extension: GET shows, POST updates the server's log settings."""
        if method not in ("GET", "POST"):
            raise InvalidArgument(f"method {method} is not allowed here; use GET or POST")
        if self.logs is None:
            raise Unavailable("the server does not support dynamic logging")
        if method == "POST":
            update = parse_log_update(_parse_json(request.body, "log setting request"))
            return self._shared(log_settings_document(self.logs.update(update)), "log", update)
        return _json(log_settings_document(self.logs.current))

    async def _statistics(self, name: str, version: str) -> HttpResponse:
        return _json(statistics_document(await self.engine.statistics(name, version)))

    async def _metrics(self, render: Callable[[], bytes | Awaitable[bytes]]) -> HttpResponse:
        body = render()  # the worker processes' render is a coroutine: it asks the siblings
        return HttpResponse(
            200, body if isinstance(body, bytes) else await body, "text/plain; version=0.0.4"
        )

    async def _shared(self, document: Any, op: str, *args: Any) -> HttpResponse:
        """A settings change made here: make it on the sibling workers, then answer."""
        await self.engine.share(op, *args)
        return _json(document)

    def _server_metadata(self) -> HttpResponse:
        return _json(server_document("forwardpass", __version__, self.extensions))


async def _answer_empty(change: Awaitable[None]) -> HttpResponse:
    await change
    return _EMPTY_OK


def _register_body(body: dict[str, Any]) -> tuple[str, int, int]:
    """``{"key", "offset", "byte_size"}`` of a system shared memory register request."""
    key = body.get("key")
    if not isinstance(key, str):
        raise InvalidArgument("register request: 'key' must be a string")
    offset = body.get("offset", 0)
    byte_size = body.get("byte_size")
    for what, value in (("offset", offset), ("byte_size", byte_size)):
        if type(value) is not int or value < 0:
            raise InvalidArgument(
                f"register request: {what!r} must be a non-negative integer, got {value!r}"
            )
    assert isinstance(byte_size, int) and isinstance(offset, int)
    return key, offset, byte_size


def _load_parameters(params: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    """Triton's load parameters; over HTTP a ``file:<path>`` value is base64 text."""
    decoded: dict[str, Any] = {}
    for key, value in params.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidArgument(f"load parameter {key!r} must be base64 text")
            try:
                value = base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise InvalidArgument(
                    f"load parameter {key!r} is not valid base64: {exc}"
                ) from None
        decoded[key] = value
    return read_load_parameters(decoded)


def _decompress(request: HttpRequest, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "").lower()
    if not encoding or encoding == "identity":
        return request.body
    if encoding not in ("gzip", "deflate"):
        raise Unsupported(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(request.body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidArgument(f"cannot decompress {encoding} body: {exc}") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the {limit}-byte limit")
    # Without these checks a cut-off stream (or a second gzip member) would be a silently
    # shorter body, and the checksum at the end would never be verified.
    if not decompressor.eof:
        raise InvalidArgument(f"cannot decompress {encoding} body: the stream is truncated")
    if decompressor.unused_data:
        raise InvalidArgument(
            f"cannot decompress {encoding} body: {len(decompressor.unused_data)} byte(s) follow "
            "the end of the compressed stream"
        )
    return out
