"""The monitoring tap: request records handed off the hot path to sinks on a background thread.

The engine builds one :class:`Record` per finished request (success or failure) and calls
:meth:`MonitorHub.submit`: a length check and a deque append, nothing else on the request's
thread. A background thread drains the deque every ``interval_s`` (0.25 s: the sinks' fixed
cost of a drain — a profiler call, a window push, a SQLite transaction — is shared by more
records; a killed process loses at most that much of the request log) and hands each model's
records, in arrival order, to every :class:`Sink`. A queue half full wakes the thread early,
and so does :meth:`MonitorHub.flush`. A full queue drops the record and counts it
(``forwardpass_monitor_dropped_total{model,reason}``).

Guarantees:

- A sink never fails or slows a request: it runs on the hub's thread, and a sink that raises
  is disabled *for that model* (other models keep it), with the reason logged and listed in
  :attr:`MonitorHub.disabled`.
- Records reach each sink in the order their requests finished, in batches (one list per model
  per drain).
- The record's arrays are references to the request's own numpy arrays, never copies: a sink
  must not modify them.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from forwardpass.types import Tensor

__all__ = ["MonitorHub", "Record", "Sink", "Stages"]

log = logging.getLogger("forwardpass.monitor")


@dataclass(slots=True)
class Stages:
    """What the engine notes about a monitored request as it runs: nanoseconds by stage and,
    when a monitor of the model asks for them (``capture``), references to the model's own
    tensors. An unmonitored request has none (the engine's one check is ``stages is None``)."""

    queue_ns: int = 0
    compute_ns: int = 0
    preprocess_ns: int = 0
    postprocess_ns: int = 0
    #: Rows the request carried (its leading dimension; 1 for a model without batching).
    batch_size: int = 1
    #: Keep the model's inputs, raw outputs and processing side data (a drift monitor).
    capture: bool = False
    model_inputs: dict[str, np.ndarray] | None = None
    model_outputs: dict[str, np.ndarray] | None = None
    extra: dict[str, np.ndarray] | None = None
    #: The response cache's key of the request (models with the cache on) and whether the
    #: answer came from the cache (then nothing ran, and ``model_inputs`` stays None).
    cache_key: bytes | None = None
    cached: bool = False


@dataclass(slots=True)
class Record:
    """One finished request, as the monitors see it.

    ``inputs`` are the validated client inputs (what the client sent, by name: tabular
    processing's named columns, not the model's feature matrix); ``outputs`` are what the
    response carries (empty on failure). Both are references to the request's arrays.
    """

    id: str
    #: Wall-clock seconds (Unix time) when the request arrived at the engine.
    time: float
    model: str
    version: str
    #: "OK" or the error's code (``ForwardpassError.code``, e.g. "INVALID_ARGUMENT").
    status: str
    #: The error's message; "" on success.
    error: str
    total_ns: int
    stages: Stages
    inputs: dict[str, np.ndarray]
    #: Request parameters (sensitive attributes may come from here).
    parameters: dict[str, Any]
    #: The response's tensors; read them through :attr:`outputs`.
    tensors: list[Tensor] = field(default_factory=list)
    #: The model's own inputs (after input processing), raw outputs (before output
    #: processing) and processing side data (image geometry): kept only when a monitor of
    #: the model asks for them (:attr:`Stages.capture`), and never on a cache hit.
    model_inputs: dict[str, np.ndarray] | None = None
    model_outputs: dict[str, np.ndarray] | None = None
    extra: dict[str, np.ndarray] | None = None
    #: Answered from the response cache (``tensors`` are the cached outputs).
    cached: bool = False
    cache_key: bytes | None = None

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        return {t.name: t.data for t in self.tensors}

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@runtime_checkable
class Sink(Protocol):
    """What a monitor implements to receive records.

    ``name`` labels the sink in logs and metrics. ``observe`` gets one model's records in
    arrival order, on the hub's thread; raising disables the sink for that model. ``close``
    is called once, after the last ``observe``, when the hub stops.
    """

    name: str

    def observe(self, records: list[Record]) -> None: ...

    def close(self) -> None: ...


class MonitorHub:
    """A bounded queue of :class:`Record` drained into sinks by one background thread."""

    def __init__(
        self, sinks: list[Sink], *, max_queue: int = 10_000, interval_s: float = 0.25
    ) -> None:
        self.sinks = list(sinks)
        self.max_queue = max_queue
        self.interval_s = interval_s
        self._queue: collections.deque[Record] = collections.deque()
        #: (model, reason) → records dropped.
        self.dropped: dict[tuple[str, str], int] = {}
        #: (sink name, model) → why the sink was disabled for that model.
        self.disabled: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        #: Set to drain now: a flush, the stop, or the queue reaching ``_wake_at`` records.
        self._wake = threading.Event()
        self._wake_at = max(1, max_queue // 2)
        self._drained = threading.Condition()
        self._passes = 0
        self._thread = threading.Thread(target=self._run, name="fp-monitor", daemon=True)
        self._started = False

    def start(self) -> None:
        """Start the background thread (once; an engine without watched models has none)."""
        if not self._started and not self._stop.is_set():
            self._started = True
            self._thread.start()

    # ------------------------------------------------------------------ hot path
    def submit(self, record: Record) -> None:
        """Queue ``record``; drop it (counted) when the queue is full or the hub stopped."""
        if len(self._queue) >= self.max_queue or self._stop.is_set():
            key = (record.model, "queue_full" if not self._stop.is_set() else "stopped")
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return
        self._queue.append(record)
        if len(self._queue) == self._wake_at:
            self._wake.set()

    # ------------------------------------------------------------------ background
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        by_model: dict[str, list[Record]] = {}
        while queue:
            record = queue.popleft()
            by_model.setdefault(record.model, []).append(record)
        for model, records in by_model.items():
            for sink in self.sinks:
                if (sink.name, model) in self.disabled:
                    continue
                try:
                    sink.observe(records)
                except Exception as exc:  # a monitor's failure never reaches a request
                    reason = f"{type(exc).__name__}: {exc}"
                    self.disabled[(sink.name, model)] = reason
                    log.error(
                        "monitor %s is disabled for model %s: %s", sink.name, model, reason,
                        exc_info=True,
                    )  # fmt: skip
        with self._drained:
            self._passes += 1
            self._drained.notify_all()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until what was queued before this call has reached the sinks (False on
        timeout). Call it off the event loop."""
        if not self._thread.is_alive():
            return not self._queue
        with self._drained:
            target = self._passes + 2  # the pass under way may have started before the call
            deadline = time.monotonic() + timeout_s
            while self._passes < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._drained.wait(left)
        return True

    def close(self) -> None:
        """Drain what is queued, stop the thread, close every sink."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self._drain()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("monitor %s failed to close", sink.name)
