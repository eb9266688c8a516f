"""A tiny OTLP/HTTP trace receiver on 127.0.0.1 for the OpenTelemetry tests.

It decodes each ``POST /v1/traces`` (protobuf ``ExportTraceServiceRequest``, as the
exporter sends; JSON is accepted too) and keeps the spans as plain :class:`Span` records.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int]]
    status_code: int
    status_message: str
    trace_state: str
    resource: dict[str, Any] = field(default_factory=dict)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


class OtlpReceiver:
    """``with OtlpReceiver() as receiver: ... receiver.url ... receiver.wait(n)``."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.content_types: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                content_type = self.headers.get("content-type", "")
                message = ExportTraceServiceRequest()
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                if "json" in content_type:
                    json_format.Parse(body, message)
                else:
                    message.ParseFromString(body)
                receiver._add(message, content_type)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _add(self, message: ExportTraceServiceRequest, content_type: str) -> None:
        spans = []
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        Span(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes=_attributes(s.attributes),
                            events=[(e.name, e.time_unix_nano) for e in s.events],
                            status_code=s.status.code,
                            status_message=s.status.message,
                            trace_state=s.trace_state,
                            resource=resource,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.content_types.append(content_type)
            self.spans.extend(spans)

    def wait(self, count: int, timeout: float = 15.0) -> list[Span]:
        """The spans received once there are at least ``count`` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} spans, received {len(self.spans)}")

    def traces(self) -> dict[str, list[Span]]:
        """The spans received so far, by trace id."""
        out: dict[str, list[Span]] = {}
        with self._lock:
            for span in self.spans:
                out.setdefault(span.trace_id, []).append(span)
        return out

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
