"""The engine's monitoring: which models are watched, the tap, and what the API reads back.

:class:`Monitoring` owns the :class:`~forwardpass.monitor.hub.MonitorHub` and its sinks (the
request log when the server has one, the fairness monitor, the drift monitors, and any sink
added with :meth:`Monitoring.add_sink`). The engine asks :meth:`stages` once per request — a
dict lookup and an identity check — and only for a watched model gets a
:class:`~forwardpass.monitor.hub.Stages` to fill and a record is built (:meth:`tap`). A
model's ``monitoring`` declaration is read (by :func:`~forwardpass.monitor.settings.
read_monitoring`, the one parser) when its handle changes (a load or reload); an error in it
(bad JSON, a column the model lacks) is logged and reported on ``/fairness`` and
``/monitor``, and the model serves on without the monitor it broke.

Drift alarms turning on or off are written to the request log's ``events`` table.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from forwardpass.config import ServerConfig
from forwardpass.errors import ForwardpassError, InvalidArgument, NotFound
from forwardpass.monitor.drift_sink import DriftSink
from forwardpass.monitor.fairness import FairnessMonitor
from forwardpass.monitor.hub import MonitorHub, Record, Sink, Stages
from forwardpass.monitor.requestlog import (
    EventRow,
    RequestLog,
    SqliteStore,
    read_events,
    read_rows,
)
from forwardpass.monitor.settings import MonitoringSettings, read_monitoring

if TYPE_CHECKING:
    from forwardpass.engine.models import LoadedVersion, ModelHandle
    from forwardpass.types import InferRequest, InferResponse

__all__ = ["Monitoring"]

log = logging.getLogger("forwardpass.monitor")


class Monitoring:
    """Monitoring for one engine."""

    def __init__(self, config: ServerConfig, sinks: list[Sink] | None = None) -> None:
        self.config = config
        self.fairness = FairnessMonitor()
        self.drift = DriftSink(self._event)
        self.store: SqliteStore | None = None
        self.request_log: RequestLog | None = None
        all_sinks: list[Sink] = []
        if config.request_log:
            self.store = SqliteStore(
                config.request_log,
                max_bytes=config.request_log_max_bytes,
                max_age_s=config.request_log_max_age_s,
            )
            self.request_log = RequestLog(self.store, config.monitor_payload_sample)
            all_sinks.append(self.request_log)
        all_sinks.append(self.fairness)
        all_sinks.append(self.drift)
        all_sinks.extend(sinks or ())
        #: Sinks beside the request log, fairness and drift: they watch every model.
        self._others = len(sinks or ())
        self.hub = MonitorHub(all_sinks, max_queue=config.monitor_queue_size)
        #: model → (the handle's entry it was read for, watched, capture model tensors).
        self._watched: dict[str, tuple[object, bool, bool]] = {}
        #: model → problems with its monitoring declaration.
        self.errors: dict[str, list[str]] = {}
        #: Build drift monitors when a model loads (:meth:`prepare`); off for an engine that
        #: only runs a model to profile it (``forwardpass monitor reference``).
        self.prepare_on_load = True
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    def add_sink(self, sink: Sink) -> None:
        """Another monitor: it receives every watched model's records."""
        self.hub.sinks.append(sink)
        self._others += 1
        self._watched.clear()  # every model is read again: the new sink may watch it

    def prepare(self, handle: ModelHandle) -> None:
        """Read ``handle``'s monitoring declaration and build its versions' drift monitors
        (reference, profiler, scipy) now, after a load, rather than on the hub's thread while
        the first requests are served. Never raises: a problem is what ``/monitor`` reports."""
        if not self.prepare_on_load:
            return
        try:
            if self.watches(handle) and self.drift.wants(handle.name):
                for version in list(handle.versions):
                    self.drift.monitor(handle.name, version)
        except Exception:
            log.exception("model %s: cannot prepare its monitors", handle.name)

    # ------------------------------------------------------------------ hot path
    def watches(self, handle: ModelHandle) -> bool:
        """Whether requests to ``handle``'s model are recorded (read again after a reload)."""
        cached = self._watched.get(handle.name)
        if cached is None or cached[0] is not handle.entry:
            cached = self._configure(handle)
        return cached[1]

    def stages(self, handle: ModelHandle) -> Stages | None:
        """What the engine fills in for a request to ``handle``'s model; ``None`` when the
        model is not watched (the request's one monitoring check)."""
        cached = self._watched.get(handle.name)
        if cached is None or cached[0] is not handle.entry:
            cached = self._configure(handle)
        return Stages(capture=cached[2]) if cached[1] else None

    def new_id(self) -> str:
        """An id for a request that came without one (returned to the client)."""
        return f"{self._prefix}-{next(self._ids)}"

    def tap(
        self,
        handle: ModelHandle,
        loaded: LoadedVersion,
        request: InferRequest,
        inputs: dict[str, np.ndarray],
        wall: float,
        start_ns: int,
        stages: Stages,
        response: InferResponse | None = None,
        error: ForwardpassError | None = None,
    ) -> None:
        """Hand the finished request to the hub (never raises into the request)."""
        if inputs:
            first = next(iter(inputs.values()))
            if handle.config.batching and first.ndim:
                stages.batch_size = int(first.shape[0])
        self.hub.submit(
            Record(
                id=request.id,
                time=wall,
                model=handle.name,
                version=str(loaded.version),
                status="OK" if error is None else error.code,
                error="" if error is None else error.message,
                total_ns=time.monotonic_ns() - start_ns,
                stages=stages,
                inputs=inputs,
                parameters=request.parameters,
                tensors=response.outputs if response is not None else [],
                model_inputs=stages.model_inputs,
                model_outputs=stages.model_outputs,
                extra=stages.extra,
                cached=stages.cached,
                cache_key=stages.cache_key,
            )
        )

    # ------------------------------------------------------------------ configuration
    def _configure(self, handle: ModelHandle) -> tuple[object, bool, bool]:
        name = handle.name
        errors: list[str] = []
        settings: MonitoringSettings | None = None
        try:
            settings = read_monitoring(handle.config.parameters)
        except ForwardpassError as exc:
            errors.append(exc.message)
        if settings is not None:
            errors.extend(settings.errors.values())
        fairness = settings.fairness if settings is not None else None
        if fairness is not None:
            missing = [c for c in fairness.sensitive if c not in handle.input_specs]
            if missing:
                errors.append(
                    f"fairness: sensitive column(s) {missing} are not inputs of model {name!r} "
                    f"(inputs {sorted(handle.input_specs)}); fairness is off for it"
                )
                fairness = None
            elif fairness.prediction_output not in handle.output_specs:
                errors.append(
                    f"fairness: prediction_output {fairness.prediction_output!r} is not an "
                    f"output of model {name!r} (outputs {sorted(handle.output_specs)}); "
                    "fairness is off for it"
                )
                fairness = None
        enabled = settings.enable if settings is not None else True
        self.fairness.configure(name, fairness if enabled else None)
        drift = settings is not None and enabled and settings.declares("drift")
        self.drift.configure(
            name,
            handle.entry,
            settings.drift if drift and settings is not None else None,
            settings.errors.get("drift") if drift and settings is not None else None,
        )
        if self.request_log is not None:
            if settings is not None and settings.payload_sample is not None:
                self.request_log.samples[name] = settings.payload_sample
            else:
                self.request_log.samples.pop(name, None)
        for error in errors:
            log.error("model %s: monitoring: %s (the model serves on)", name, error)
        if errors:
            self.errors[name] = errors
        else:
            self.errors.pop(name, None)
        for key in [k for k in dict(self.hub.disabled) if k[1] == name]:
            self.hub.disabled.pop(key, None)  # a reload gives its monitors a fresh start
        capture = self.drift.wants(name)
        on = enabled and (
            self.store is not None or fairness is not None or capture or self._others > 0
        )
        watched = (handle.entry, on, capture and on)
        self._watched[name] = watched
        if on:
            self.hub.start()
        return watched

    def _event(self, model: str, version: str, kind: str, detail: dict[str, Any]) -> None:
        """A monitor's event (a drift alarm turning on or off), on the hub's thread."""
        log.warning("model %s version %s: %s %s", model, version, kind, detail)
        if self.store is not None:
            detail_text = orjson.dumps(detail, option=orjson.OPT_SERIALIZE_NUMPY).decode()
            self.store.append_events([EventRow(time.time(), model, version, kind, detail_text)])

    # ------------------------------------------------------------------ reading back
    def feedback(self, model: str, body: Any, partial: bool = False) -> dict[str, Any]:
        """``POST /v2/models/M/feedback``: one ``{"id", "truth"}`` or a list of them.
        Blocking (waits for the hub to catch up): call it off the event loop. ``partial``:
        join what this worker predicted, return the other ids under ``missing``."""
        items = body if isinstance(body, list) else [body]
        if not items:
            raise InvalidArgument("feedback is empty: send {'id': ..., 'truth': ...} or a list")
        self.hub.flush()  # a prediction answered a moment ago may still be queued
        joined = self.fairness.feedback(model, items, partial)
        if self.store is not None:
            missing = set(joined.get("missing", ()))
            try:
                self.store.set_truth(
                    {item["id"]: item["truth"] for item in items if item["id"] not in missing}
                )
            except Exception as exc:  # the join stands; the log copy is best-effort
                log.error("request log: cannot record ground truth: %s", exc)
        return joined

    def fairness_document(self, model: str) -> dict[str, Any]:
        settings = self.fairness.settings.get(model)
        doc: dict[str, Any] = {"model": model, "configured": settings is not None}
        if settings is not None:
            doc["sensitive"] = [*settings.sensitive, *settings.sensitive_parameters]
            doc["prediction_output"] = settings.prediction_output
            doc["positive_label"] = settings.positive_label
            doc["pending"] = self.fairness.pending_count(model)
            doc["versions"] = self.fairness.report(model)
        doc["errors"] = self.errors.get(model, [])
        doc["disabled"] = self.disabled(model)
        return doc

    def monitor_document(self, handle: ModelHandle, loaded: LoadedVersion) -> dict[str, Any]:
        """``GET /v2/models/M[/versions/V]/monitor``: the version's drift report, and what
        the hub says of the model's monitoring (errors, disabled sinks, dropped records).
        Builds the drift monitor on first use: call it off the event loop."""
        name = handle.name
        self.watches(handle)  # the declaration is read for the current handle
        if not self.drift.declared(name):
            raise InvalidArgument(
                f"model {name!r} has no drift monitoring configured (add a "
                "'monitoring' parameter with a 'drift' section to its config)"
            )
        disabled = self.disabled(name)
        doc = self.drift.report(name, loaded.version, disabled.get(self.drift.name))
        doc["errors"] = self.errors.get(name, [])
        doc["disabled"] = disabled
        doc["dropped_records"] = sum(n for (m, _), n in self.dropped().items() if m == name)
        doc["sinks"] = [
            s.name for s in self.hub.sinks if s.name not in disabled and self._feeds(s, name)
        ]
        return doc

    def _feeds(self, sink: Sink, model: str) -> bool:
        if sink is self.fairness:
            return model in self.fairness.settings
        if sink is self.drift:
            return self.drift.wants(model)
        return True

    def disabled(self, model: str) -> dict[str, str]:
        """sink → why the hub disabled it for ``model``."""
        disabled = dict(self.hub.disabled)  # a copy: the hub's thread may add to it
        return {s: r for (s, m), r in disabled.items() if m == model}

    def log_rows(
        self, model: str, since: float | None, limit: int, kind: str = "requests"
    ) -> list[dict[str, Any]]:
        """The request log's newest rows of ``model``: ``kind`` ``requests``, ``events``
        (what the monitors reported) or ``all`` (both, by time; each row has its ``kind``)."""
        if self.store is None:
            raise NotFound("the server keeps no request log (start it with --request-log PATH)")
        self.hub.flush()
        return log_documents(self.store.path, model, since, limit, kind)

    def dropped(self) -> Mapping[tuple[str, str], int]:
        return dict(self.hub.dropped)

    def close(self) -> None:
        self.hub.close()


LOG_KINDS = ("requests", "events", "all")


def log_documents(
    path: Any, model: str, since: float | None, limit: int, kind: str
) -> list[dict[str, Any]]:
    """Rows of the request log as documents, for the API and ``forwardpass log``."""
    if kind not in LOG_KINDS:
        raise InvalidArgument(f"kind must be one of {list(LOG_KINDS)}, got {kind!r}")
    out: list[dict[str, Any]] = []
    if kind in ("requests", "all"):
        tag = {"kind": "request"} if kind == "all" else {}
        out += [{**tag, **r.document()} for r in read_rows(path, model, since, limit)]
    if kind in ("events", "all"):
        out += [e.document() for e in read_events(path, model, since, limit)]
    if kind == "all":
        out.sort(key=lambda d: d["time"])
        out = out[-limit:]
    return out
