"""Triton's OpenTelemetry trace mode: trace context, settings, sampling, and the spans as an
OTLP/HTTP receiver gets them (monitor/otel.py, monitor/trace.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from forwardpass.errors import InvalidArgument
from forwardpass.monitor.otel import OtelSettings, parse_traceparent
from forwardpass.monitor.trace import (
    Tracer,
    TraceSettings,
    check_trace_settings,
    parse_trace_update,
)
from otlp_receiver import OtlpReceiver, Span

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
HEADER = f"00-{TRACE_ID}-{SPAN_ID}-01"


# ---------------------------------------------------------------------- traceparent
def test_traceparent_parses_w3c_context() -> None:
    parent = parse_traceparent(HEADER, "congo=t61rcWkgMzE")
    assert parent is not None
    assert parent.trace_id == int(TRACE_ID, 16) and parent.span_id == int(SPAN_ID, 16)
    assert parent.flags == 1 and parent.tracestate == "congo=t61rcWkgMzE"
    # A later version may add fields after the flags.
    later = parse_traceparent(f"01-{TRACE_ID}-{SPAN_ID}-00-extra")
    assert later is not None and later.flags == 0


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"00-{TRACE_ID}-{SPAN_ID}",  # no flags
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper-case hex
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # forbidden version
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has nothing after the flags
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",  # short trace id
        f"00-{TRACE_ID}-{SPAN_ID}-1",
    ],
)
def test_an_invalid_traceparent_is_ignored(header: str) -> None:
    assert parse_traceparent(header) is None


# ---------------------------------------------------------------------- settings
def test_otel_settings_take_tritons_names_and_defaults() -> None:
    assert OtelSettings.parse([]) == OtelSettings()
    assert OtelSettings().url == "http://localhost:4318/v1/traces"
    settings = OtelSettings.parse(
        [
            ("url", "http://collector:4318/v1/traces"),
            ("resource", "service.name=x"),
            ("resource", "service.version=1"),
            ("bsp_schedule_delay", "50"),
            "bsp_max_export_batch_size=8",
        ]
    )
    assert settings.url == "http://collector:4318/v1/traces"
    assert settings.resource == (("service.name", "x"), ("service.version", "1"))
    assert settings.bsp_schedule_delay == 50 and settings.bsp_max_export_batch_size == 8


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("url", "collector:4318")], "url must be an http:// or https:// URL"),
        ([("resource", "service.name")], "resource must be <key>=<value>"),
        ([("bsp_max_queue_size", "many")], "bsp_max_queue_size must be an integer"),
        ([("bsp_schedule_delay", "0")], "bsp_schedule_delay must be positive"),
        ([("file", "/tmp/x")], "unknown setting 'file'"),
        (
            [("bsp_max_queue_size", "4"), ("bsp_max_export_batch_size", "8")],
            "bsp_max_export_batch_size (8) must not exceed bsp_max_queue_size (4)",
        ),
    ],
)
def test_otel_settings_reject_with_precise_messages(
    pairs: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        OtelSettings.parse(pairs)
    assert message in info.value.message


def test_opentelemetry_mode_needs_no_file_and_allows_rate_zero() -> None:
    otel = TraceSettings(level=("TIMESTAMPS",), rate=0, mode="opentelemetry")
    check_trace_settings(otel)  # no error: rate 0 traces only propagated requests
    assert otel.reason == ""
    with pytest.raises(InvalidArgument, match="trace file name is not given"):
        check_trace_settings(TraceSettings(level=("TIMESTAMPS",), mode="triton"))
    assert parse_trace_update({"trace_mode": ["OpenTelemetry"]}) == {"mode": "opentelemetry"}


# ---------------------------------------------------------------------- sampling
def _otel_tracer(url: str = "http://127.0.0.1:9/v1/traces", **fields: object) -> Tracer:
    defaults = TraceSettings(level=("TIMESTAMPS",), mode="opentelemetry", **fields)  # type: ignore[arg-type]
    return Tracer(defaults, opentelemetry=OtelSettings(url=url, bsp_schedule_delay=20))


def test_sampling_by_rate_and_a_propagated_context_regardless_of_rate_and_count() -> None:
    tracer = _otel_tracer(rate=3, count=2)
    try:
        sampled = [tracer.sample("m") is not None for _ in range(9)]
        assert sampled == [False, False, True, False, False, True, False, False, False]
        assert tracer.settings().count == 0
        assert tracer.active  # an OpenTelemetry scope still listens for a client's context
        trace = tracer.sample("m", {"traceparent": HEADER, "tracestate": "a=b"})
        assert trace is not None and trace.parent is not None
        assert trace.parent.trace_id == int(TRACE_ID, 16) and trace.parent.tracestate == "a=b"
        # An invalid header is ignored: the request is sampled as any other (here: not).
        assert tracer.sample("m", {"traceparent": "00-zz-01"}) is None
    finally:
        tracer.close()


def test_rate_zero_traces_only_requests_with_a_client_context() -> None:
    tracer = _otel_tracer(rate=0)
    try:
        assert [tracer.sample("m") for _ in range(5)] == [None] * 5
        assert tracer.sample("m", {"traceparent": HEADER}) is not None
        assert tracer.sample("m", {"traceparent": "bad"}) is None
    finally:
        tracer.close()


def test_triton_mode_ignores_traceparent_and_keeps_its_file_format(tmp_path: object) -> None:
    tracer = Tracer(TraceSettings(level=("TIMESTAMPS",), rate=2, file="unused.json"))
    try:
        assert tracer.sample("m", {"traceparent": HEADER}) is None  # rate 2: the first is not
        trace = tracer.sample("m", {"traceparent": HEADER})
        assert trace is not None and trace.parent is None
        trace.model_version = "1"
        for name in ("REQUEST_START", "PREPROCESS_START", "PREPROCESS_END", "REQUEST_END"):
            trace.stamp(name)
        names = [r for r in trace.records() if b"timestamps" in r]
        assert len(names) == 2 and all(b"PREPROCESS" not in r for r in names)
    finally:
        tracer.writer.close()


def test_switching_to_opentelemetry_through_the_settings_api() -> None:
    tracer = Tracer(TraceSettings(file="t.json"))
    try:
        assert tracer.writer.spans is None  # the SDK is not imported until a scope uses it
        settings = tracer.update("", parse_trace_update({"trace_mode": "opentelemetry"}))
        assert settings.mode == "opentelemetry" and not tracer.active  # still OFF
        settings = tracer.update("m", parse_trace_update({"trace_level": ["TIMESTAMPS"]}))
        assert settings.mode == "opentelemetry" and tracer.active
        assert tracer.writer.spans is not None
        cleared = tracer.update("", parse_trace_update({"trace_mode": None}))
        assert cleared.mode == "triton"
    finally:
        tracer.close()


# ---------------------------------------------------------------------- spans
@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


STAMPS = [
    "HTTP_RECV_END",
    "REQUEST_START",
    "PREPROCESS_START",
    "PREPROCESS_END",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "POSTPROCESS_START",
    "POSTPROCESS_END",
    "REQUEST_END",
    "HTTP_SEND_START",
]


def _by_name(spans: list[Span]) -> dict[str, Span]:
    out = {s.name: s for s in spans}
    assert len(out) == len(spans), [s.name for s in spans]
    return out


def test_spans_parent_child_structure_and_timings(receiver: OtlpReceiver) -> None:
    tracer = Tracer(
        TraceSettings(level=("TIMESTAMPS",), rate=1, mode="opentelemetry"),
        opentelemetry=OtelSettings(
            url=receiver.url, resource=(("service.name", "fp-unit"),), bsp_schedule_delay=20
        ),
    )
    try:
        trace = tracer.sample("add", {"traceparent": HEADER, "tracestate": "congo=t61"})
        assert trace is not None
        trace.model_version, trace.request_id = "3", "r-1"
        base = time.monotonic_ns()
        at = {name: base + 1000 * i for i, name in enumerate(STAMPS)}
        for name in STAMPS:
            trace.stamp(name, at[name])
        trace.finish()
        assert tracer.writer.flush()
        assert tracer.writer.spans is not None and tracer.writer.spans.flush()
        spans = _by_name(receiver.wait(8))
    finally:
        tracer.close()
    assert set(spans) == {
        "InferRequest",
        "decode",
        "add",
        "preprocess",
        "queue",
        "compute",
        "postprocess",
        "encode",
    }
    root, model = spans["InferRequest"], spans["add"]
    # The client's context is the root's parent; every span is in the client's trace.
    assert root.parent_span_id == SPAN_ID and root.trace_state == "congo=t61"
    assert {s.trace_id for s in spans.values()} == {TRACE_ID}
    assert root.kind == 2  # SPAN_KIND_SERVER
    assert root.resource["service.name"] == "fp-unit"
    for child in ("decode", "add", "encode"):
        assert spans[child].parent_span_id == root.span_id, child
    for child in ("preprocess", "queue", "compute", "postprocess"):
        assert spans[child].parent_span_id == model.span_id, child
    # Timings: the monotonic stamps moved onto the wall clock by one offset.
    offset = root.start_ns - at["HTTP_RECV_END"]
    assert abs(offset - (time.time_ns() - time.monotonic_ns())) < 5_000_000_000
    expected = {
        "InferRequest": ("HTTP_RECV_END", "HTTP_SEND_START"),
        "decode": ("HTTP_RECV_END", "REQUEST_START"),
        "add": ("REQUEST_START", "REQUEST_END"),
        "preprocess": ("PREPROCESS_START", "PREPROCESS_END"),
        "queue": ("QUEUE_START", "COMPUTE_START"),
        "compute": ("COMPUTE_START", "COMPUTE_END"),
        "postprocess": ("POSTPROCESS_START", "POSTPROCESS_END"),
        "encode": ("REQUEST_END", "HTTP_SEND_START"),
    }
    for name, (begin, end) in expected.items():
        assert spans[name].start_ns - offset == at[begin], name
        assert spans[name].end_ns - offset == at[end], name
    assert [e for e, _ in root.events] == ["HTTP_RECV_END", "HTTP_SEND_START"]
    assert [e for e, _ in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [e for e, _ in spans["compute"].events] == [
        "COMPUTE_START",
        "COMPUTE_INPUT_END",
        "COMPUTE_OUTPUT_START",
        "COMPUTE_END",
    ]
    assert model.attributes == {
        "triton.model_name": "add",
        "triton.model_version": 3,
        "triton.trace_id": trace.id,
        "request_id": "r-1",
    }
    assert root.status_code == 0  # UNSET: the request succeeded


def test_a_failed_request_without_a_context_starts_its_own_trace(receiver: OtlpReceiver) -> None:
    tracer = Tracer(
        TraceSettings(level=("TIMESTAMPS",), rate=1, mode="opentelemetry"),
        opentelemetry=OtelSettings(url=receiver.url, bsp_schedule_delay=20),
    )
    try:
        trace = tracer.sample("add", {"traceparent": "not-a-traceparent"})
        assert trace is not None and trace.parent is None
        trace.model_version = "1"
        for name in ("HTTP_RECV_END", "REQUEST_START", "REQUEST_END"):
            trace.stamp(name)
        trace.error = "unexpected inference input 'y'"
        trace.finish()
        tracer.writer.flush()
        spans = _by_name(receiver.wait(3))
    finally:
        tracer.close()
    assert set(spans) == {"InferRequest", "decode", "add"}  # no queue, compute or encode
    root = spans["InferRequest"]
    assert root.parent_span_id == "" and root.trace_id != TRACE_ID
    assert root.status_code == 2 and root.status_message == "unexpected inference input 'y'"
    assert spans["add"].status_code == 2


def test_a_model_that_traces_follows_the_global_switch_to_opentelemetry() -> None:
    tracer = Tracer(TraceSettings(file="t.json"))
    try:
        tracer.update("m", parse_trace_update({"trace_level": ["TIMESTAMPS"]}))
        assert tracer.writer.spans is None  # Triton's file mode: no exporter
        tracer.update("", parse_trace_update({"trace_mode": "opentelemetry"}))  # global: OFF
        assert tracer.settings("m").mode == "opentelemetry"
        assert tracer.writer.spans is not None  # the model's traces have somewhere to go
    finally:
        tracer.close()
