"""Triton's request tracing: settings, sampling, timestamps and the trace file.

Nothing here knows a wire. :class:`Tracer` holds the settings (the start-up defaults, the
global ones and per-model overrides), samples requests, and hands finished :class:`Trace`
objects to a :class:`TraceWriter` thread that writes Triton's JSON trace format. Protocols
parse a client's update with :func:`parse_trace_update` (plain mappings of setting name to
``None`` | str | list of str, which is what both Triton's HTTP JSON and its gRPC
``TraceSettingRequest`` carry) and render :class:`TraceSettings` themselves (HTTP:
``protocol.documents.trace_settings_document``).

Semantics, as Triton's trace manager has them:

- ``trace_level`` OFF, or any of TIMESTAMPS and TENSORS; ``trace_rate`` N traces every N-th
  request of a scope (the global setting, or one model's); ``trace_count`` is how many traces
  are left (-1 never runs out; GET shows what remains); ``log_frequency`` N writes every N
  traces to ``<trace_file>.<index>``, 0 writes them all to ``<trace_file>``.
- A model's settings are the global ones except for the fields it set itself; a field sent as
  ``null`` is cleared (the model falls back to the global value, the global setting to its
  start-up value); a model with no field of its own left follows the global setting again.
- Every update starts a fresh sampling scope (the request counter starts over).
- A setting that traces must have a non-zero rate and a trace file; ``trace_file`` cannot be
  changed over the network (it names a file on the server's disk).

Where this differs from Triton, on purpose: with ``log_frequency`` 0 the file is rewritten as
valid JSON as traces arrive rather than once at shutdown, so it can be read while the server
runs; ``TENSORS`` renders FP16 values rather than leaving them empty; unknown level names are
rejected rather than ignored. Timestamps are ``time.monotonic_ns()``: CLOCK_MONOTONIC, the
clock behind C++'s ``steady_clock`` that Triton stamps with, so the numbers compare directly.

``trace_mode`` "opentelemetry" (Triton's OpenTelemetry mode, :mod:`forwardpass.monitor.otel`)
samples and stamps the same way, needs no file, lets ``trace_rate`` be 0, and traces every
request that carries a valid W3C ``traceparent`` whatever the rate and count (as Triton
does); the writer thread turns its traces into spans instead of file records.

Cost: with tracing off, a request pays one attribute read (``Tracer.active``). Sampling takes a
lock only while some scope traces. Serializing and file I/O happen on the writer thread; its
queue is bounded, and a full queue drops the trace (counted in ``TraceWriter.dropped``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument
from forwardpass.monitor.otel import OtelSettings, SpanExporter, TraceParent, parse_traceparent

__all__ = [
    "CLEAR",
    "LEVELS",
    "MODES",
    "Trace",
    "TraceSettings",
    "TraceWriter",
    "Tracer",
    "check_trace_settings",
    "parse_trace_level",
    "parse_trace_mode",
    "parse_trace_update",
]

log = logging.getLogger("forwardpass.trace")

#: Trace levels besides OFF, in the order Triton lists them.
LEVELS = ("TIMESTAMPS", "TENSORS")
_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1
#: Setting names as Triton spells them on the wire, and the TraceSettings field of each.
_FIELDS = {
    "trace_level": "level",
    "trace_rate": "rate",
    "trace_count": "count",
    "log_frequency": "log_frequency",
    "trace_file": "file",
    "trace_mode": "mode",
}
#: Triton's trace modes: its own JSON trace file, or OpenTelemetry spans over OTLP.
MODES = ("triton", "opentelemetry")
OPENTELEMETRY = "opentelemetry"
#: Activities only the OpenTelemetry spans use (Triton's trace file has no such names).
SPAN_ONLY = frozenset(
    {"PREPROCESS_START", "PREPROCESS_END", "POSTPROCESS_START", "POSTPROCESS_END"}
)


class _Clear:
    """The value of a field a client sent as ``null``: drop the override."""

    _instance: _Clear | None = None

    def __new__(cls) -> _Clear:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "CLEAR"


CLEAR = _Clear()


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """One scope's trace settings. ``level`` empty means OFF."""

    level: tuple[str, ...] = ()
    rate: int = 1000
    #: Traces left to take; -1 never runs out.
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    #: Triton's trace mode: "triton" (the trace file) or "opentelemetry" (OTLP spans).
    mode: str = "triton"

    @property
    def reason(self) -> str:
        """Why this setting traces nothing ("" when it traces), in Triton's words.

        In OpenTelemetry mode no file is needed, and rate 0 is allowed: as in Triton, it
        traces only the requests that carry a client's ``traceparent``."""
        if not self.level:
            return "tracing is disabled"
        if self.mode == OPENTELEMETRY:
            return ""
        if self.rate == 0:
            return "sample rate must be non-zero"
        if not self.file:
            return "trace file name is not given"
        return ""


# ---------------------------------------------------------------------- parsing
def parse_trace_level(values: Any) -> tuple[str, ...]:
    """``["TIMESTAMPS", "TENSORS"]`` or ``["OFF"]`` → the level tuple (empty for OFF)."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise InvalidArgument("'trace_level' must be an array of strings")
    if "OFF" in values:
        if len(values) != 1:
            raise InvalidArgument("Expect only one trace level 'OFF' is specified")
        return ()
    for value in values:
        if value not in LEVELS:
            raise InvalidArgument(
                f"unknown trace level {value!r} in 'trace_level' (expected OFF, TIMESTAMPS "
                "or TENSORS)"
            )
    return tuple(level for level in LEVELS if level in values)


def parse_trace_mode(value: Any) -> str:
    """``"triton"`` or ``"opentelemetry"`` (any case; gRPC's one-element list too)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or value.strip().lower() not in MODES:
        raise InvalidArgument(
            f"Unable to parse 'trace_mode', got: {value!r} (expected triton or opentelemetry)"
        )
    return value.strip().lower()


def _parse_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, list) and len(value) == 1:  # gRPC carries every value as a list
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidArgument(f"Unable to parse '{name}', got: {value!r}")
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{name}', got: {text}") from None
    if name == "trace_count" and number < low:
        raise InvalidArgument(
            f"Unable to parse 'trace_count'. Expecting value >= {low}, got:{text}"
        )
    if not low <= number <= high:
        raise InvalidArgument(
            f"Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {text}"
        )
    return number


def parse_trace_update(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A client's update → ``{TraceSettings field: value or CLEAR}``.

    Values are what Triton's clients send: strings for the numbers (ints are accepted too),
    a list of strings for ``trace_level``; ``None`` (HTTP ``null``) or an empty list (gRPC's
    empty value) clears the field.
    """
    if not isinstance(settings, Mapping):
        raise InvalidArgument("trace settings must be a JSON object")
    update: dict[str, Any] = {}
    for name, value in settings.items():
        if name == "trace_file":
            raise InvalidArgument("trace file location can not be updated through network protocol")
        if name not in _FIELDS:
            raise InvalidArgument(
                f"unknown trace setting {name!r} (expected trace_level, trace_rate, "
                "trace_count, log_frequency or trace_mode)"
            )
        target = _FIELDS[name]
        if value is None or (isinstance(value, list) and not value):
            update[target] = CLEAR
        elif name == "trace_level":
            update[target] = parse_trace_level(value)
        elif name == "trace_mode":
            update[target] = parse_trace_mode(value)
        elif name == "trace_count":
            update[target] = _parse_int(name, value, -1, _INT32_MAX)
        else:
            update[target] = _parse_int(name, value, 0, _UINT32_MAX)
    return update


# ---------------------------------------------------------------------- traces
class _Scope:
    """One live setting and its sampler: the global setting, or one model's."""

    __slots__ = (
        "collected",
        "created",
        "pending",
        "pending_traces",
        "seen",
        "settings",
        "specified",
    )

    def __init__(self, settings: TraceSettings, specified: dict[str, Any]) -> None:
        self.settings = settings
        #: The fields this scope set itself (the rest follow the scope above).
        self.specified = specified
        self.seen = 0
        self.created = 0
        # Writer-thread side: traces written, and records waiting for an indexed file.
        self.collected = 0
        self.pending: list[bytes] = []
        self.pending_traces = 0

    @property
    def tracing(self) -> bool:
        """Whether a request of this scope may be traced. An OpenTelemetry scope whose count
        ran out (or whose rate is 0) still traces the requests with a client's context."""
        settings = self.settings
        if settings.reason:
            return False
        return settings.count != 0 or settings.mode == OPENTELEMETRY


class Trace:
    """The timestamps (and, at level TENSORS, the tensors) of one sampled request."""

    __slots__ = (
        "_scope",
        "_tracer",
        "error",
        "id",
        "model_name",
        "model_version",
        "parent",
        "request_id",
        "tensors",
        "timestamps",
        "with_tensors",
        "with_timestamps",
    )

    def __init__(
        self,
        tracer: Tracer,
        scope: _Scope,
        trace_id: int,
        model_name: str,
        parent: TraceParent | None = None,
    ) -> None:
        self._tracer = tracer
        self._scope = scope
        self.id = trace_id
        self.model_name = model_name
        #: Set by the engine once it has found the version; a trace without one is not written.
        self.model_version = ""
        self.request_id = ""
        #: The client's W3C trace context (OpenTelemetry mode), the parent of the root span.
        self.parent = parent
        #: The failure's message when the request failed (the spans' error status).
        self.error = ""
        self.timestamps: list[tuple[str, int]] = []
        self.tensors: list[tuple[str, str, DataType, np.ndarray]] = []
        level = scope.settings.level
        if scope.settings.mode == OPENTELEMETRY:
            # Spans are made of the timestamps; tensors have no place in them (Triton, too,
            # traces no tensors in this mode).
            self.with_timestamps, self.with_tensors = True, False
        else:
            self.with_timestamps = "TIMESTAMPS" in level
            self.with_tensors = "TENSORS" in level

    @property
    def mode(self) -> str:
        return self._scope.settings.mode

    def stamp(self, name: str, ns: int = 0) -> None:
        """Record activity ``name`` at ``ns`` (now when 0), on the monotonic clock."""
        if self.with_timestamps:
            self.timestamps.append((name, ns or time.monotonic_ns()))

    def tensor(self, activity: str, name: str, datatype: DataType, array: np.ndarray) -> None:
        """Record a tensor (TENSOR_QUEUE_INPUT, TENSOR_BACKEND_OUTPUT); rendered off-path."""
        if self.with_tensors:
            self.tensors.append((activity, name, datatype, array))

    def finish(self) -> None:
        """Hand the trace to the writer; it is written if the engine gave it a version."""
        if self.model_version:
            self._tracer.writer.submit(self)

    def records(self) -> list[bytes]:
        """Triton's JSON records of this trace: a header, one per timestamp, one per tensor."""
        header: dict[str, Any] = {"id": self.id, "model_name": self.model_name}
        try:
            header["model_version"] = int(self.model_version)
        except ValueError:
            header["model_version"] = self.model_version
        if self.request_id:
            header["request_id"] = self.request_id
        out = [orjson.dumps(header)]
        for name, ns in self.timestamps:
            if name in SPAN_ONLY:
                continue
            out.append(orjson.dumps({"id": self.id, "timestamps": [{"name": name, "ns": ns}]}))
        for activity, name, datatype, array in self.tensors:
            out.append(
                orjson.dumps(
                    {
                        "id": self.id,
                        "activity": activity,
                        "tensor": {
                            "name": name,
                            "data": _tensor_text(datatype, array),
                            "shape": ",".join(str(d) for d in array.shape),
                            "dtype": datatype.value,
                        },
                    }
                )
            )
        return out


def _tensor_text(datatype: DataType, array: np.ndarray) -> str:
    """Comma-separated values, as Triton writes them; BYTES elements in escaped quotes."""
    flat = array.reshape(-1)
    if datatype is DataType.BYTES:
        items = (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat)
        return ",".join(f'\\"{s}\\"' for s in items)
    if datatype is DataType.BF16:  # uint16 bit patterns; Triton leaves these empty too
        return ""
    if datatype is DataType.BOOL:
        return ",".join("1" if v else "0" for v in flat)
    return ",".join(str(v) for v in flat.tolist())


# ---------------------------------------------------------------------- writer
class _Retire:
    __slots__ = ("scope",)

    def __init__(self, scope: _Scope) -> None:
        self.scope = scope


class _Barrier:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class TraceWriter:
    """Writes finished traces to trace files on its own thread; never blocks a request."""

    def __init__(self, max_queued: int = 10_000) -> None:
        self._queue: queue.Queue[object] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Traces dropped because the queue was full or the writer had stopped.
        self.dropped = 0
        #: Writes that failed (the error is logged).
        self.errors = 0
        self._closed = False
        # Writer-thread state: plain files begun (and records to append), next index per file.
        self._begun: set[str] = set()
        self._plain: dict[str, list[bytes]] = {}
        self._index: dict[str, int] = {}
        #: Scopes with records waiting for their indexed file.
        self._open: set[_Scope] = set()
        #: Turns OpenTelemetry-mode traces into spans (set by the Tracer when a scope uses it).
        self.spans: SpanExporter | None = None

    def submit(self, trace: Trace) -> None:
        self._put(trace)

    def retire(self, scope: _Scope) -> None:
        """A setting was replaced: its traces waiting for an indexed file are written now."""
        if self._thread is not None:
            self._put(_Retire(scope))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is on disk (for tests and shutdown)."""
        if self._thread is None:
            return True
        barrier = _Barrier()
        self._queue.put(barrier)
        return barrier.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is left (pending indexed files included) and stop the thread."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)

    def _put(self, item: object) -> None:
        if self._closed:
            self.dropped += 1
            return
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="fp-trace-writer", daemon=True
                    )
                    self._thread.start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("trace writer is behind: %d trace(s) dropped", self.dropped)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            while True:
                if item is _STOP:
                    self._guarded(self._write_plain)
                    for scope in list(self._open):
                        self._guarded(self._write_indexed, scope)
                    return
                if isinstance(item, _Barrier):
                    self._guarded(self._write_plain)
                    item.done.set()
                else:
                    self._guarded(self._handle, item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            # Drained: bring the plain files up to date (one write per burst, not per trace).
            self._guarded(self._write_plain)

    def _guarded(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a trace file (or span) problem never stops the writer
            self.errors += 1
            log.error("cannot write trace: %s: %s", type(exc).__name__, exc)

    def _handle(self, item: object) -> None:
        if isinstance(item, _Retire):
            self._write_indexed(item.scope)
            return
        assert isinstance(item, Trace)
        scope = item._scope
        if scope.settings.mode == OPENTELEMETRY:
            if self.spans is not None:
                self.spans.emit(item)
            return
        records = item.records()
        scope.collected += 1
        settings = scope.settings
        if settings.log_frequency == 0:
            self._plain.setdefault(settings.file, []).extend(records)
            return
        scope.pending.extend(records)
        scope.pending_traces += 1
        self._open.add(scope)
        # A full group goes to the next indexed file; so does the last group of a scope whose
        # count ran out (as Triton does, rather than waiting for shutdown).
        exhausted = settings.count == 0 and scope.collected >= scope.created
        if scope.pending_traces >= settings.log_frequency or exhausted:
            self._write_indexed(scope)

    def _write_indexed(self, scope: _Scope) -> None:
        self._open.discard(scope)
        if not scope.pending:
            return
        path = scope.settings.file
        index = self._index.get(path, 0)
        self._index[path] = index + 1
        records, scope.pending, scope.pending_traces = scope.pending, [], 0
        with open(f"{path}.{index}", "wb") as f:
            f.write(b"[" + b",".join(records) + b"]")

    def _write_plain(self) -> None:
        """Append waiting records to each plain trace file, keeping it one valid JSON array."""
        plain, self._plain = self._plain, {}
        for path, records in plain.items():
            if not records:
                continue
            body = b",".join(records) + b"]"
            if path not in self._begun:
                with open(path, "wb") as f:  # the first write of a run starts the file afresh
                    f.write(b"[" + body)
                self._begun.add(path)
            else:
                with open(path, "r+b") as f:
                    f.seek(-1, 2)  # over the closing "]"
                    f.write(b"," + body)


# ---------------------------------------------------------------------- tracer
class Tracer:
    """Trace settings (start-up, global, per model), the sampler, and the writer.

    ``active`` is true while any scope traces; the engine reads it once per request and does
    nothing else when it is false.
    """

    def __init__(
        self,
        defaults: TraceSettings | None = None,
        max_queued: int = 10_000,
        opentelemetry: OtelSettings | None = None,
    ) -> None:
        self.defaults = defaults or TraceSettings()
        #: Where OpenTelemetry-mode spans go (``--trace-config opentelemetry,...``).
        self.opentelemetry = opentelemetry or OtelSettings()
        self.writer = TraceWriter(max_queued)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._global = _Scope(self.defaults, {})
        self._models: dict[str, _Scope] = {}
        self.active = False
        self._spans_for(self._global.settings)
        self._refresh()

    # ------------------------------------------------------------------ settings
    def settings(self, model_name: str = "") -> TraceSettings:
        """The settings in force for a model (its own, else the global ones), count as left."""
        scope = self._models.get(model_name, self._global) if model_name else self._global
        return scope.settings

    def update(self, model_name: str, update: Mapping[str, Any]) -> TraceSettings:
        """Apply a parsed update (see :func:`parse_trace_update`) to a model, or globally
        when ``model_name`` is "". Nothing changes if the result would be invalid."""
        unknown = set(update) - set(_FIELDS.values())
        if unknown:
            raise InvalidArgument(f"unknown trace setting field(s): {sorted(unknown)}")
        with self._lock:
            models = dict(self._models)
            retired: list[_Scope] = []
            if model_name:
                scope = models.get(model_name)
                specified = _merge(scope.specified if scope else {}, update)
                if not specified:
                    if scope is not None:
                        retired.append(models.pop(model_name))
                else:
                    new = _Scope(_resolve(self._global.settings, specified), specified)
                    check_trace_settings(new.settings)
                    self._spans_for(new.settings)
                    if scope is not None:
                        retired.append(scope)
                    models[model_name] = new
                new_global = self._global
            else:
                specified = _merge(self._global.specified, update)
                new_global = _Scope(_resolve(self.defaults, specified), specified)
                check_trace_settings(new_global.settings)
                self._spans_for(new_global.settings)
                retired.append(self._global)
                # Models that follow the global setting in some field start over with it.
                for name, scope in list(models.items()):
                    if set(scope.specified) == set(_FIELDS.values()):
                        continue
                    new = _Scope(_resolve(new_global.settings, scope.specified), scope.specified)
                    check_trace_settings(new.settings, f"model {name}: ")
                    self._spans_for(new.settings)
                    retired.append(scope)
                    models[name] = new
            self._global = new_global
            self._models = models
            self._refresh()
        for scope in retired:
            self.writer.retire(scope)
        settings = self.settings(model_name)
        log.info(
            "trace settings of %s: %s",
            f"model {model_name}" if model_name else "the server",
            settings,
        )
        return settings

    def _refresh(self) -> None:
        self.active = self._global.tracing or any(s.tracing for s in self._models.values())

    def _spans_for(self, settings: TraceSettings) -> None:
        """A setting in OpenTelemetry mode needs the span exporter: made (and the otel extra
        imported) on first use, so that a missing extra fails the update, not a request."""
        if settings.mode == OPENTELEMETRY and settings.level and self.writer.spans is None:
            self.writer.spans = SpanExporter(self.opentelemetry)

    # ------------------------------------------------------------------ sampling
    def sample(self, model_name: str, carrier: Mapping[str, str] | None = None) -> Trace | None:
        """A new trace if this request of ``model_name`` is sampled, else None.

        ``carrier`` holds the request's headers (HTTP) or metadata (gRPC), lower-case. In
        OpenTelemetry mode a valid W3C ``traceparent`` there makes the trace a child of the
        client's span and, as in Triton, traces the request whatever the rate and count (an
        invalid one is ignored: the request is sampled as any other).
        """
        scope = self._models.get(model_name, self._global)
        parent = None
        if carrier and scope.settings.mode == OPENTELEMETRY:
            header = carrier.get("traceparent")
            if header is not None:
                parent = parse_traceparent(header, carrier.get("tracestate", ""))
        with self._lock:
            settings = scope.settings
            if not scope.tracing:
                return None
            if parent is None:
                if settings.rate == 0 or settings.count == 0:
                    return None
                scope.seen += 1
                if scope.seen % settings.rate:
                    return None
                if settings.count > 0:
                    scope.settings = settings = replace(settings, count=settings.count - 1)
                    if settings.count == 0:
                        self._refresh()
            scope.created += 1
            trace_id = next(self._ids)
        return Trace(self, scope, trace_id, model_name, parent)

    def close(self, timeout: float = 10.0) -> None:
        """Write every trace still queued or waiting for its indexed file; export the spans
        still waiting in the batch span processor."""
        with self._lock:
            self.active = False
        self.writer.close(timeout)
        if self.writer.spans is not None:
            self.writer.spans.close()


def _merge(specified: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(specified)
    for key, value in update.items():
        if value is CLEAR:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _resolve(base: TraceSettings, specified: Mapping[str, Any]) -> TraceSettings:
    return replace(base, **specified)


def check_trace_settings(settings: TraceSettings, prefix: str = "") -> None:
    """Triton accepts a setting that traces nothing only when it is OFF."""
    reason = settings.reason
    if reason and settings.level:
        raise InvalidArgument(f"{prefix}Attempting to set invalid trace setting :{reason}")
