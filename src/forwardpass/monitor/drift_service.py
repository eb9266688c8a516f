"""The engine's drift monitors: one :class:`DriftMonitor` per model version, fed off the hot path.

The engine calls :meth:`DriftService.enabled` for every computed request (one dict lookup:
is drift configured for this model?) and, when it is, :meth:`DriftService.submit`, which puts
a :class:`DriftRecord` on a bounded queue and returns; a full queue drops the record and
counts it. One background thread takes records off the queue in batches and hands each
batch to its version's monitor (``observe``), so profiling, the embedding network and the
tests never run on a request's time.

A version's monitor is built on first use from the model's ``monitoring.drift`` settings and
the reference profile in its folder. A problem there (no reference, one built for other
inputs, settings naming features the model lacks) leaves the model serving and is what
``GET /v2/models/M/monitor`` reports; a monitor that raises while observing is disabled
with the reason in the log and in that report.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwardpass.errors import ForwardpassError, InvalidArgument

__all__ = ["DriftService"]

log = logging.getLogger("forwardpass.monitor.drift")

_BATCH = 64
#: Records waiting for the monitor thread beyond this are dropped (and counted).
QUEUE_SIZE = 4096


@dataclass(slots=True)
class _Slot:
    """A version's monitor, or why there is none, for the model entry it was built from."""

    entry: object
    monitor: Any = None
    error: str | None = None


class DriftService:
    """Per-version drift monitors behind one bounded queue and one worker thread."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue: queue.Queue[tuple[Any, Any, Any] | None] = queue.Queue(queue_size)
        self._flags: dict[str, tuple[object, bool]] = {}
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._build_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.dropped: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------ hot path
    def enabled(self, handle: Any) -> bool:
        """Whether ``handle``'s model has a ``monitoring.drift`` section (cached per entry)."""
        entry = handle.entry
        cached = self._flags.get(handle.name)
        if cached is not None and cached[0] is entry:
            return cached[1]
        flag = False
        text = entry.config.parameters.get("monitoring") if entry is not None else None
        if text is not None:
            try:
                from forwardpass.monitor.drift_settings import monitoring_section

                section = monitoring_section(entry.config)
                flag = section is not None and "drift" in section
            except ForwardpassError:
                flag = True  # a malformed section: the monitor's report says what is wrong
        self._flags[handle.name] = (entry, flag)
        return flag

    def submit(
        self,
        handle: Any,
        loaded: Any,
        request_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        extra: Mapping[str, np.ndarray],
    ) -> None:
        """Queue one computed request for its monitor; never blocks, never raises."""
        from forwardpass.monitor.drift import DriftRecord

        if self._closed:
            return
        try:
            record = DriftRecord(
                handle.name, loaded.version, dict(inputs), dict(outputs), dict(extra), request_id
            )
            if self._thread is None:
                self._start()
            self._queue.put_nowait((handle, loaded, record))
        except queue.Full:
            key = (handle.name, loaded.version)
            self.dropped[key] = self.dropped.get(key, 0) + 1
        except Exception:  # telemetry never fails a request
            log.exception("drift monitor: cannot queue a record")

    def _start(self) -> None:
        with self._build_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="fp-drift-monitor", daemon=True
                )
                self._thread.start()

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            items = [item]
            while item is not None and len(items) < _BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
            records = [i for i in items if i is not None]
            try:
                if records:
                    self._deliver(records)
            finally:
                for _ in items:
                    self._queue.task_done()
            if items[-1] is None:
                return

    def _deliver(self, items: list[tuple[Any, Any, Any]]) -> None:
        groups: dict[tuple[str, int], list[tuple[Any, Any, Any]]] = {}
        for item in items:
            groups.setdefault((item[0].name, item[1].version), []).append(item)
        for group in groups.values():
            handle, loaded, _ = group[0]
            try:
                monitor = self.monitor(handle, loaded)
                if monitor is not None:
                    monitor.observe([record for _, _, record in group])
            except Exception:
                log.exception("drift monitor of %s failed", handle.name)

    # ------------------------------------------------------------------ monitors
    def monitor(self, handle: Any, loaded: Any) -> Any:
        """The version's monitor (built on first use), or None when it cannot be built."""
        return self._slot(handle, loaded).monitor

    def _slot(self, handle: Any, loaded: Any) -> _Slot:
        key = (handle.name, loaded.version)
        slot = self._slots.get(key)
        if slot is not None and slot.entry is handle.entry:
            return slot
        with self._build_lock:
            slot = self._slots.get(key)
            if slot is None or slot.entry is not handle.entry:
                if slot is not None and slot.monitor is not None:
                    slot.monitor.save()
                slot = self._build(handle, loaded)
                self._slots[key] = slot
        return slot

    def _build(self, handle: Any, loaded: Any) -> _Slot:
        from forwardpass.monitor.drift import DriftMonitor
        from forwardpass.monitor.drift_settings import drift_settings
        from forwardpass.monitor.reference import MONITOR_FOLDER, load_reference, profiler_for

        entry = handle.entry
        slot = _Slot(entry)
        try:
            settings = drift_settings(entry.config)
            if settings is None:
                slot.error = "no monitoring.drift section in the model's config"
                return slot
            if importlib.util.find_spec("scipy") is None:
                slot.error = "drift monitoring needs scipy: pip install 'forwardpass[monitor]'"
                return slot
            reference = load_reference(entry.path, entry.config)
            profiler = profiler_for(
                entry.config,
                entry.path,
                entry.labels,
                loaded.version,
                settings.embedding,
                settings.categorical,
                settings.features,
            )
            slot.monitor = DriftMonitor(
                handle.name,
                loaded.version,
                settings,
                reference,
                profiler,
                entry.path / MONITOR_FOLDER / "state",
            )
        except ForwardpassError as exc:
            slot.error = exc.message
        except Exception as exc:
            slot.error = f"{type(exc).__name__}: {exc}"
        if slot.error is not None:
            log.error(
                "model %s version %s: drift monitoring is off: %s",
                handle.name,
                loaded.version,
                slot.error,
            )
        return slot

    def report(self, handle: Any, loaded: Any) -> dict[str, Any]:
        """``GET /v2/models/M[/versions/V]/monitor``: the monitor's document or its error."""
        if not self.enabled(handle):
            raise InvalidArgument(
                f"model {handle.name!r} has no drift monitoring configured (add a "
                "'monitoring' parameter with a 'drift' section to its config)"
            )
        slot = self._slot(handle, loaded)
        dropped = self.dropped.get((handle.name, loaded.version), 0)
        if slot.monitor is None:
            return {
                "model": handle.name,
                "version": str(loaded.version),
                "enabled": False,
                "error": slot.error,
                "alarm": False,
                "dropped_records": dropped,
                "features": [],
                "history": [],
            }
        return {**slot.monitor.report(), "dropped_records": dropped}

    def monitors(self) -> Iterator[tuple[str, int, Any]]:
        """(model, version, monitor) of every built monitor, for /metrics."""
        for (name, version), slot in list(self._slots.items()):
            if slot.monitor is not None:
                yield name, version, slot.monitor

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the queued records are observed (tests, shutdown)."""
        import time

        deadline = time.monotonic() + timeout
        while self._thread is not None and time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the worker after the queued records and save every monitor's state."""
        self._closed = True
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=5.0)
            self._thread.join(timeout=30.0)
        for _, _, monitor in self.monitors():
            monitor.save()
