"""The engine's monitoring: which models are watched, the tap, and what the API reads back.

:class:`Monitoring` owns the :class:`~forwardpass.monitor.hub.MonitorHub` and its sinks (the
request log when the server has one, the fairness monitor, and any sink added with
:meth:`Monitoring.add_sink`, e.g. a drift monitor). The engine asks :meth:`watches` once per
request — a dict lookup and an identity check — and only for a watched model builds a record
(:meth:`tap`). A model's ``monitoring`` declaration is read when its handle changes (a load or
reload); an error in it (bad JSON, a column the model lacks) is logged and reported on
``/fairness``, and the model serves on without the monitor it broke.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.config import ServerConfig
from forwardpass.errors import ForwardpassError, InvalidArgument, NotFound
from forwardpass.monitor.fairness import FairnessMonitor
from forwardpass.monitor.hub import MonitorHub, Record, Sink, Stages
from forwardpass.monitor.requestlog import RequestLog, SqliteStore, read_rows
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
        all_sinks.extend(sinks or ())
        #: Sinks beside the request log and fairness (drift): they watch every model.
        self._others = len(sinks or ())
        self.hub = MonitorHub(all_sinks, max_queue=config.monitor_queue_size)
        #: model → (the handle's entry it was read for, watched).
        self._watched: dict[str, tuple[object, bool]] = {}
        #: model → problems with its monitoring declaration.
        self.errors: dict[str, list[str]] = {}
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    def add_sink(self, sink: Sink) -> None:
        """Another monitor (a drift monitor): it receives every watched model's records."""
        self.hub.sinks.append(sink)
        self._others += 1
        self._watched.clear()  # every model is read again: the new sink may watch it

    # ------------------------------------------------------------------ hot path
    def watches(self, handle: ModelHandle) -> bool:
        """Whether requests to ``handle``'s model are recorded (read again after a reload)."""
        cached = self._watched.get(handle.name)
        if cached is not None and cached[0] is handle.entry:
            return cached[1]
        return self._configure(handle)

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
            )
        )

    # ------------------------------------------------------------------ configuration
    def _configure(self, handle: ModelHandle) -> bool:
        name = handle.name
        errors: list[str] = []
        settings: MonitoringSettings | None = None
        try:
            settings = read_monitoring(handle.config.parameters)
        except ForwardpassError as exc:
            errors.append(exc.message)
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
        on = enabled and (self.store is not None or fairness is not None or self._others > 0)
        self._watched[name] = (handle.entry, on)
        if on:
            self.hub.start()
        return on

    # ------------------------------------------------------------------ reading back
    def feedback(self, model: str, body: Any) -> dict[str, Any]:
        """``POST /v2/models/M/feedback``: one ``{"id", "truth"}`` or a list of them.
        Blocking (waits for the hub to catch up): call it off the event loop."""
        items = body if isinstance(body, list) else [body]
        if not items:
            raise InvalidArgument("feedback is empty: send {'id': ..., 'truth': ...} or a list")
        self.hub.flush()  # a prediction answered a moment ago may still be queued
        joined = self.fairness.feedback(model, items)
        if self.store is not None:
            try:
                self.store.set_truth({item["id"]: item["truth"] for item in items})
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
        disabled = dict(self.hub.disabled)  # a copy: the hub's thread may add to it
        doc["disabled"] = {s: r for (s, m), r in disabled.items() if m == model}
        return doc

    def log_rows(self, model: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        if self.store is None:
            raise NotFound("the server keeps no request log (start it with --request-log PATH)")
        self.hub.flush()
        return [r.document() for r in read_rows(self.store.path, model, since, limit)]

    def dropped(self) -> Mapping[tuple[str, str], int]:
        return dict(self.hub.dropped)

    def close(self) -> None:
        self.hub.close()
