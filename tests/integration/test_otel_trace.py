"""Triton's OpenTelemetry trace mode on a real server: tritonclient over HTTP and gRPC with a
W3C ``traceparent``, spans exported over OTLP/HTTP to an in-test receiver."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from otlp_receiver import OtlpReceiver, Span

pytestmark = pytest.mark.slow

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"


def _spans_by_trace(spans: list[Span]) -> dict[str, dict[str, Span]]:
    out: dict[str, dict[str, Span]] = {}
    for span in spans:
        out.setdefault(span.trace_id, {})[span.name] = span
    return out


def _check_request(spans: dict[str, Span], model: str, recv: str, send: str) -> Span:
    """One request's spans: InferRequest → decode, <model> (→ queue, compute), encode."""
    assert {"InferRequest", "decode", model, "queue", "compute", "encode"} <= set(spans), spans
    root, model_span = spans["InferRequest"], spans[model]
    for name in ("decode", model, "encode"):
        assert spans[name].parent_span_id == root.span_id, name
    for name in ("queue", "compute"):
        assert spans[name].parent_span_id == model_span.span_id, name
    # Children lie inside their parents, one after another.
    order = [spans[n] for n in ("decode", model, "encode")]
    assert root.start_ns <= order[0].start_ns
    assert all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(order))
    assert order[-1].end_ns <= root.end_ns
    assert model_span.start_ns <= spans["queue"].start_ns <= spans["queue"].end_ns
    assert spans["queue"].end_ns == spans["compute"].start_ns
    assert spans["compute"].end_ns <= model_span.end_ns
    assert [e for e, _ in root.events] == [recv, send]
    assert model_span.attributes["triton.model_name"] == model
    assert model_span.attributes["triton.model_version"] == 1
    assert [e for e, _ in spans["compute"].events] == [
        "COMPUTE_START",
        "COMPUTE_INPUT_END",
        "COMPUTE_OUTPUT_START",
        "COMPUTE_END",
    ]
    assert root.resource["service.name"] == "fp-it"
    return root


def test_opentelemetry_spans_over_http_and_grpc(start_server: Any, main_repository: Path) -> None:
    x = np.ones((1, 4), np.float32)
    with OtlpReceiver() as receiver:
        server = start_server(
            main_repository,
            "--trace-config",
            "mode=opentelemetry",
            "--trace-config",
            "level=TIMESTAMPS",
            "--trace-config",
            "rate=2",
            "--trace-config",
            f"opentelemetry,url={receiver.url}",
            "--trace-config",
            "opentelemetry,resource=service.name=fp-it",
            "--trace-config",
            "opentelemetry,bsp_schedule_delay=50",
        )
        http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        settings = http.get_trace_settings()
        assert settings["trace_mode"] == "opentelemetry" and settings["trace_rate"] == "2"
        assert grpc.get_trace_settings().settings["trace_mode"].value == ["opentelemetry"]

        def http_infer(headers: dict[str, str] | None = None) -> None:
            tensor = httpclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            http.infer("mlp", [tensor], headers=headers)

        def grpc_infer(headers: dict[str, str] | None = None) -> None:
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            grpc.infer("mlp", [tensor], headers=headers)

        # A client's context: traced whatever the rate, the root a child of the client's span.
        http_infer({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "tracestate": "vendor=a1"})
        grpc_span = "00f067aa0ba902b7"
        grpc_infer({"traceparent": f"00-{TRACE_ID}-{grpc_span}-00"})
        spans = receiver.wait(12)
        traced = [s for s in spans if s.trace_id == TRACE_ID]
        roots = {s.parent_span_id: s for s in traced if s.name == "InferRequest"}
        assert set(roots) == {SPAN_ID, grpc_span}
        assert roots[SPAN_ID].trace_state == "vendor=a1"
        for parent, recv, send in (
            (SPAN_ID, "HTTP_RECV_END", "HTTP_SEND_START"),
            (grpc_span, "GRPC_WAIT_READ_END", "GRPC_SEND_START"),
        ):
            root = roots[parent]
            mine = {root.span_id}
            for _ in range(2):  # the root's children, then theirs
                mine |= {s.span_id for s in traced if s.parent_span_id in mine}
            _check_request({s.name: s for s in traced if s.span_id in mine}, "mlp", recv, send)

        # No context (or an invalid one, which is ignored, never an error): rate 2 samples
        # every second request, each one the root of a new trace.
        for i in range(4):
            http_infer({"traceparent": "00-not-valid-01"} if i == 0 else None)
        for _ in range(4):
            grpc_infer({"traceparent": "garbage"})
        spans = receiver.wait(12 + 4 * 6)
        fresh = _spans_by_trace([s for s in spans if s.trace_id != TRACE_ID])
        assert len(fresh) == 4
        recvs = sorted(s["InferRequest"].events[0][0] for s in fresh.values())
        assert recvs == ["GRPC_WAIT_READ_END"] * 2 + ["HTTP_RECV_END"] * 2
        for trace in fresh.values():
            assert trace["InferRequest"].parent_span_id == ""
            event = trace["InferRequest"].events
            _check_request(trace, "mlp", event[0][0], event[1][0])

        # Rate 0 through the trace extension: only requests with a client's context.
        updated = http.update_trace_settings(settings={"trace_rate": "0"})
        assert updated["trace_rate"] == "0" and updated["trace_mode"] == "opentelemetry"
        before = len(receiver.spans)
        for _ in range(3):
            http_infer()
        other = "1" * 32
        http_infer({"traceparent": f"00-{other}-{SPAN_ID}-01"})
        spans = receiver.wait(before + 6)
        assert {s.trace_id for s in spans[before:]} == {other}

        # A failed request: its spans carry the error.
        bad = httpclient.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.ones((1, 3), np.float32))
        failed = "2" * 32
        with pytest.raises(Exception, match="shape"):
            http.infer("mlp", [bad], headers={"traceparent": f"00-{failed}-{SPAN_ID}-01"})
        spans = receiver.wait(before + 9)
        roots_failed = [s for s in spans if s.trace_id == failed and s.name == "InferRequest"]
        assert len(roots_failed) == 1 and roots_failed[0].status_code == 2
        assert "shape" in roots_failed[0].status_message

        # Back to Triton's file mode: no trace file configured, so OFF is the only choice.
        with pytest.raises(Exception, match="trace file name is not given"):
            http.update_trace_settings(settings={"trace_mode": "triton", "trace_rate": "1"})
        assert http.get_trace_settings()["trace_mode"] == "opentelemetry"
        http.close()
        grpc.close()
