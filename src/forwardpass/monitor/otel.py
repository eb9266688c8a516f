"""Triton's OpenTelemetry trace mode: W3C trace context in, OTLP spans out.

The trace extension (:mod:`forwardpass.monitor.trace`) samples and stamps requests the same
way in both modes; in ``opentelemetry`` mode its writer thread hands each finished
:class:`~forwardpass.monitor.trace.Trace` to :class:`SpanExporter`, which turns the
timestamps into spans (after the request has been answered, on that thread) and gives them
to the OpenTelemetry SDK's batch span processor, whose own thread exports them over
OTLP/HTTP (protobuf) to ``url``. The SDK (the ``otel`` extra) is imported only then.

Spans of one request (Triton's names where Triton has the span, events named as Triton's
trace activities):

- ``InferRequest`` (kind SERVER, the root): from the wire's first stamp to its last; events
  ``HTTP_RECV_END``/``HTTP_SEND_START`` (``GRPC_WAIT_READ_END``/``GRPC_SEND_START``). Its
  parent is the client's span when the request carried a valid ``traceparent``.
  - ``decode``: the wire parsed into a request (RECV_END → REQUEST_START).
  - ``<model name>``: the model's handling, REQUEST_START → REQUEST_END, attributes
    ``triton.model_name``, ``triton.model_version``, ``triton.trace_id``, ``request_id``
    (Triton's "model span"); events ``REQUEST_START``, ``QUEUE_START``, ``REQUEST_END``.
    - ``preprocess``: the model's declared input processing (when it has any).
    - ``queue``: QUEUE_START → COMPUTE_START (the dynamic batcher's wait).
    - ``compute``: COMPUTE_START → COMPUTE_END with Triton's events ``COMPUTE_INPUT_END``
      and ``COMPUTE_OUTPUT_START`` (Triton's "compute span").
    - ``postprocess``: the declared output processing.
  - ``encode``: the response rendered for the wire (REQUEST_END → SEND_START).

A span whose stamps a request never reached (a cache hit has no queue or compute) is left
out; a failed request's root and model spans carry status ERROR with the message. A request
the engine sampled itself (no protocol stamps: an ensemble's steps) gets a root from
REQUEST_START to REQUEST_END. Times are the monotonic stamps moved onto the wall clock by
one offset taken when the exporter starts (as Triton does).

Where this differs from Triton: the decode/queue/encode/pre/post spans are ours (Triton
puts those moments only as events); the OpenTelemetry settings are fixed at start-up, as in
Triton, but ``trace_mode`` itself can be switched through the trace extension.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forwardpass.errors import InvalidArgument, Unsupported

if TYPE_CHECKING:
    from forwardpass.monitor.trace import Trace

__all__ = ["OtelSettings", "SpanExporter", "TraceParent", "parse_traceparent"]

log = logging.getLogger("forwardpass.trace")

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_INT_SETTINGS = ("bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size")


# ---------------------------------------------------------------------- W3C trace context
@dataclass(frozen=True, slots=True)
class TraceParent:
    """A client's W3C trace context: the parent of a request's root span."""

    trace_id: int
    span_id: int
    flags: int
    #: The ``tracestate`` header as sent (parsed, and dropped if invalid, off the hot path).
    tracestate: str = ""


def parse_traceparent(header: str, tracestate: str = "") -> TraceParent | None:
    """A ``traceparent`` header → :class:`TraceParent`, or None when it is not valid W3C
    trace context (an invalid header is ignored, never an error: the spec says so)."""
    match = _TRACEPARENT.fullmatch(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    # Version ff is forbidden; version 00 has no further fields (a later version may).
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace, span = int(trace_id, 16), int(span_id, 16)
    if trace == 0 or span == 0:
        return None
    return TraceParent(trace, span, int(flags, 16), tracestate)


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True, slots=True)
class OtelSettings:
    """``--trace-config opentelemetry,<setting>=<value>``: Triton's names and defaults."""

    url: str = "http://localhost:4318/v1/traces"
    #: Resource attributes (``resource=key=value``, repeatable); service.name defaults to
    #: "forwardpass" (Triton: "triton-inference-server").
    resource: tuple[tuple[str, str], ...] = ()
    bsp_max_queue_size: int = 2048
    #: Milliseconds between two exports.
    bsp_schedule_delay: int = 5000
    bsp_max_export_batch_size: int = 512

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str] | str]) -> OtelSettings:
        """``(setting, value)`` pairs (or ``setting=value`` strings) as given on the command
        line, checked."""
        values: dict[str, Any] = {}
        resource: list[tuple[str, str]] = []
        for pair in pairs:
            if isinstance(pair, str):
                name, _, value = pair.partition("=")
            else:
                name, value = pair
            where = f"--trace-config opentelemetry,{name}={value}"
            if name == "url":
                if not re.match(r"https?://[^/\s]+", value):
                    raise InvalidArgument(f"{where}: url must be an http:// or https:// URL")
                values["url"] = value
            elif name == "resource":
                key, eq, attribute = value.partition("=")
                if not eq or not key.strip():
                    raise InvalidArgument(f"{where}: resource must be <key>=<value>")
                resource.append((key.strip(), attribute))
            elif name in _INT_SETTINGS:
                try:
                    number = int(value)
                except ValueError:
                    raise InvalidArgument(f"{where}: {name} must be an integer") from None
                if number <= 0:
                    raise InvalidArgument(f"{where}: {name} must be positive")
                values[name] = number
            else:
                raise InvalidArgument(
                    f"--trace-config opentelemetry,{name}: unknown setting {name!r} (url, "
                    "resource, bsp_max_queue_size, bsp_schedule_delay, "
                    "bsp_max_export_batch_size)"
                )
        settings = cls(resource=tuple(resource), **values)
        if settings.bsp_max_export_batch_size > settings.bsp_max_queue_size:
            raise InvalidArgument(
                f"--trace-config opentelemetry: bsp_max_export_batch_size "
                f"({settings.bsp_max_export_batch_size}) must not exceed bsp_max_queue_size "
                f"({settings.bsp_max_queue_size})"
            )
        return settings


# ---------------------------------------------------------------------- spans
_RECV = ("HTTP_RECV_END", "GRPC_WAIT_READ_END")
_SEND = ("HTTP_SEND_START", "GRPC_SEND_START")
_MODEL_EVENTS = ("REQUEST_START", "QUEUE_START", "REQUEST_END")
_COMPUTE_EVENTS = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")


class SpanExporter:
    """Finished traces → OpenTelemetry spans → the SDK's batch span processor → OTLP/HTTP.

    ``emit`` runs on the trace writer's thread; exporting runs on the processor's thread.
    The provider is this server's own (never the process-global one), and its sampler
    keeps every span: sampling was decided when the request arrived (``trace_rate``, or
    the client's context, which Triton traces whatever its sampled flag)."""

    def __init__(self, settings: OtelSettings) -> None:
        try:
            from opentelemetry import trace as api
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        except ImportError as exc:
            raise Unsupported(
                "trace mode opentelemetry needs the otel extra (pip install "
                f"'forwardpass[otel]'): {exc}"
            ) from None
        self._api = api
        self.settings = settings
        attributes = {"service.name": "forwardpass", **dict(settings.resource)}
        self._provider = TracerProvider(
            resource=Resource.create(attributes), sampler=ALWAYS_ON, shutdown_on_exit=False
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=settings.url, timeout=5),
                max_queue_size=settings.bsp_max_queue_size,
                schedule_delay_millis=settings.bsp_schedule_delay,
                max_export_batch_size=settings.bsp_max_export_batch_size,
            )
        )
        self._tracer = self._provider.get_tracer("forwardpass")
        #: Monotonic stamp + offset = Unix-epoch nanoseconds.
        self._offset = time.time_ns() - time.monotonic_ns()
        log.info("OpenTelemetry spans go to %s", settings.url)

    def emit(self, trace: Trace) -> None:
        """Make the spans of one finished request (see the module docstring)."""
        api = self._api
        first: dict[str, int] = {}
        for name, ns in trace.timestamps:
            first.setdefault(name, ns + self._offset)
        if "REQUEST_START" not in first:
            return  # never reached the engine: there is no model span to show
        start, end = min(first.values()), max(first.values())
        context = None
        if trace.parent is not None:
            context = api.set_span_in_context(api.NonRecordingSpan(self._remote(trace.parent)))
        error = trace.error
        root = self._tracer.start_span(
            "InferRequest",
            context=context,
            kind=api.SpanKind.SERVER,
            start_time=start,
            attributes={"triton.trace_id": trace.id, "triton.model_name": trace.model_name},
        )
        for name in (*_RECV, *_SEND):
            if name in first:
                root.add_event(name, timestamp=first[name])
        inside = api.set_span_in_context(root)
        recv = next((first[n] for n in _RECV if n in first), None)
        send = next((first[n] for n in _SEND if n in first), None)
        self._child("decode", recv, first["REQUEST_START"], inside)
        attributes: dict[str, Any] = {
            "triton.model_name": trace.model_name,
            "triton.model_version": _version(trace.model_version),
            "triton.trace_id": trace.id,
        }
        if trace.request_id:
            attributes["request_id"] = trace.request_id
        model = self._tracer.start_span(
            trace.model_name or "model",
            context=inside,
            start_time=first["REQUEST_START"],
            attributes=attributes,
        )
        for name in _MODEL_EVENTS:
            if name in first:
                model.add_event(name, timestamp=first[name])
        steps = api.set_span_in_context(model)
        self._child("preprocess", first.get("PREPROCESS_START"), first.get("PREPROCESS_END"), steps)
        self._child("queue", first.get("QUEUE_START"), first.get("COMPUTE_START"), steps)
        compute = self._child(
            "compute", first.get("COMPUTE_START"), first.get("COMPUTE_END"), steps, end=False
        )
        if compute is not None:
            for name in _COMPUTE_EVENTS:
                if name in first:
                    compute.add_event(name, timestamp=first[name])
            compute.end(end_time=first["COMPUTE_END"])
        self._child(
            "postprocess", first.get("POSTPROCESS_START"), first.get("POSTPROCESS_END"), steps
        )
        if error:
            model.set_status(api.Status(api.StatusCode.ERROR, error))
            root.set_status(api.Status(api.StatusCode.ERROR, error))
        model.end(end_time=first.get("REQUEST_END", end))
        self._child("encode", first.get("REQUEST_END"), send, inside)
        root.end(end_time=end)

    def _child(
        self, name: str, begin: int | None, finish: int | None, context: Any, end: bool = True
    ) -> Any:
        if begin is None or finish is None or finish < begin:
            return None
        span = self._tracer.start_span(name, context=context, start_time=begin)
        if end:
            span.end(end_time=finish)
        return span

    def _remote(self, parent: TraceParent) -> Any:
        api = self._api
        state = api.TraceState()
        if parent.tracestate:
            state = api.TraceState.from_header([parent.tracestate])
        return api.SpanContext(
            parent.trace_id,
            parent.span_id,
            is_remote=True,
            trace_flags=api.TraceFlags(parent.flags & 0xFF),
            trace_state=state,
        )

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every span made so far (tests; shutdown)."""
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def close(self) -> None:
        """Export what is left and stop the processor's thread."""
        self._provider.shutdown()


def _version(version: str) -> int | str:
    try:
        return int(version)
    except ValueError:
        return version
