"""The drift sink of the monitor hub: one :class:`DriftMonitor` per model version.

The hub hands this sink each model's records on its background thread (there is no queue or
thread of its own). A record carries references to the model's own inputs, raw outputs and
processing side data, which the engine keeps only for models with a ``monitoring.drift``
section (:attr:`~forwardpass.monitor.hub.Stages.capture`).

A version's monitor is built on first use from the model's drift settings and the reference
profile in its folder. A problem there (no reference, one built for other inputs, settings
naming features the model lacks) leaves the model serving and is what
``GET /v2/models/M/monitor`` reports. A monitor that raises while observing propagates to the
hub, which disables this sink for the model (the one disabling mechanism of the monitors).

Cache hits: a request answered from the response cache ran no model, so it has no model
tensors; it is the same request as the one that filled the cache entry, so the profile of
that request (kept by cache key, a bounded LRU of small rows) is counted again. A hit whose
original profile is gone (evicted here, or filled before a restart) is counted in the
report's ``cache_hits_unprofiled``.

Alarm transitions (a window's verdict turning on or off) go to ``on_event`` (the request
log's events table when the server keeps one).
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from forwardpass.errors import ForwardpassError
from forwardpass.monitor.hub import Record
from forwardpass.monitor.settings import DriftSettings

__all__ = ["DriftSink"]

log = logging.getLogger("forwardpass.monitor.drift")

#: Profiles of cache-filling requests kept per model for their cache hits.
PROFILES_KEPT = 4096
#: A monitor's state is written at most this often under traffic (and at shutdown, and when
#: its alarm turns on or off): a killed server loses at most these seconds of windows.
SAVE_EVERY_S = 2.0

#: (model, version, kind, detail) of an alarm turning on ("drift_alarm") or off
#: ("drift_clear").
EventCallback = Callable[[str, str, str, dict[str, Any]], None]


@dataclass(slots=True)
class _Model:
    """A model's drift declaration, for the model entry it was read from."""

    entry: Any
    settings: DriftSettings | None
    error: str | None


@dataclass(slots=True)
class _Slot:
    """A version's monitor, or why there is none, for the model entry it was built from."""

    entry: object
    monitor: Any = None
    error: str | None = None


class DriftSink:
    """Per-version drift monitors fed by the monitor hub."""

    name = "drift"

    def __init__(self, on_event: EventCallback | None = None) -> None:
        self.on_event = on_event
        #: ``serve --workers N``: this worker's index. Each worker monitors the traffic it
        #: serves (a sample of the model's), with its own state file beside the model.
        self.worker: int | None = None
        self._models: dict[str, _Model] = {}
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._profiles: dict[str, collections.OrderedDict[bytes, Any]] = {}
        #: model → cache hits whose original request's profile was not at hand.
        self.unprofiled: dict[str, int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ configuration
    def configure(
        self, model: str, entry: Any, settings: DriftSettings | None, error: str | None
    ) -> None:
        """The model's drift declaration (``None`` and no error: it has none); called when
        the model's handle changes, so the next record rebuilds its monitors."""
        with self._lock:
            if settings is None and error is None:
                self._models.pop(model, None)
            else:
                self._models[model] = _Model(entry, settings, error)
            self._profiles.pop(model, None)

    def declared(self, model: str) -> bool:
        return model in self._models

    def wants(self, model: str) -> bool:
        """Whether records of ``model`` must carry the model's tensors."""
        declared = self._models.get(model)
        return declared is not None and declared.settings is not None

    # ------------------------------------------------------------------ sink
    def observe(self, records: list[Record]) -> None:
        model = records[0].model
        if not self.wants(model):
            return
        by_version: dict[int, list[Record]] = {}
        for r in records:
            if r.ok:
                by_version.setdefault(int(r.version), []).append(r)
        for version, group in by_version.items():
            monitor = self._slot(model, version).monitor
            if monitor is None:
                continue
            profiles, requests = self._profiles_of(model, monitor, group)
            for result in monitor.add(profiles, requests):
                self._event(model, version, result)

    def _profiles_of(
        self, model: str, monitor: Any, records: list[Record]
    ) -> tuple[list[Any], int]:
        """The profiles of ``records`` and how many requests they hold: requests without a
        cache key are profiled together (one profiler call per drain, not per request)."""
        kept = self._profiles.setdefault(model, collections.OrderedDict())
        profiles: list[Any] = []
        plain: list[Record] = []
        for r in records:
            if r.model_inputs is not None and r.model_outputs is not None:
                if r.cache_key is None:
                    plain.append(r)
                    continue
                profile = monitor.profiler.profile(r.model_inputs, r.model_outputs, r.extra)
                kept[r.cache_key] = profile
                if len(kept) > PROFILES_KEPT:
                    kept.popitem(last=False)
            elif r.cached and r.cache_key is not None and r.cache_key in kept:
                kept.move_to_end(r.cache_key)
                profile = kept[r.cache_key]
            else:
                if r.cached:
                    self.unprofiled[model] = self.unprofiled.get(model, 0) + 1
                continue
            profiles.append(profile)
        requests = len(profiles) + len(plain)
        if plain:
            profiles.extend(_batched(monitor, plain))
        return profiles, requests

    def _event(self, model: str, version: int, result: Any) -> None:
        if self.on_event is None:
            return
        kind = "drift_alarm" if result.alarm else "drift_clear"
        drifted = [f for f in result.features if f.drift]
        detail = {
            "window_end": result.end,
            "features": [f.feature for f in drifted],
            "p_value": {f.feature: f.p_value for f in drifted},
        }
        self.on_event(model, str(version), kind, detail)

    def close(self) -> None:
        for _, _, monitor in self.monitors():
            monitor.save()

    # ------------------------------------------------------------------ monitors
    def monitor(self, model: str, version: int) -> Any:
        """The version's monitor (built on first use), or None when it cannot be built."""
        return self._slot(model, version).monitor

    def _slot(self, model: str, version: int) -> _Slot:
        declared = self._models.get(model)
        entry = declared.entry if declared is not None else None
        key = (model, version)
        slot = self._slots.get(key)
        if slot is not None and slot.entry is entry:
            return slot
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.entry is not entry:
                if slot is not None and slot.monitor is not None:
                    slot.monitor.save()
                slot = self._build(model, version, declared)
                self._slots[key] = slot
        return slot

    def _build(self, model: str, version: int, declared: _Model | None) -> _Slot:
        from forwardpass.monitor.drift import DriftMonitor
        from forwardpass.monitor.reference import MONITOR_FOLDER, load_reference, profiler_for

        slot = _Slot(declared.entry if declared is not None else None)
        try:
            if declared is None:
                slot.error = "no monitoring.drift section in the model's config"
                return slot
            if declared.settings is None:
                slot.error = declared.error
                return slot
            if importlib.util.find_spec("scipy") is None:
                slot.error = "drift monitoring needs scipy: pip install 'forwardpass[monitor]'"
                return slot
            entry, settings = declared.entry, declared.settings
            reference = load_reference(entry.path, entry.config)
            profiler = profiler_for(
                entry.config,
                entry.path,
                entry.labels,
                version,
                settings.embedding,
                settings.categorical,
                settings.features,
            )
            state = entry.path / MONITOR_FOLDER / "state"
            if self.worker is not None:
                state = state / f"worker-{self.worker}"
            slot.monitor = DriftMonitor(
                model, version, settings, reference, profiler, state, SAVE_EVERY_S
            )
        except ForwardpassError as exc:
            slot.error = exc.message
        except Exception as exc:
            slot.error = f"{type(exc).__name__}: {exc}"
        if slot.error is not None:
            log.error(
                "model %s version %s: drift monitoring is off: %s", model, version, slot.error
            )
        return slot

    def report(self, model: str, version: int, disabled: str | None) -> dict[str, Any]:
        """The drift part of ``GET /v2/models/M[/versions/V]/monitor``: the monitor's
        document, or why there is none; ``disabled``: the hub's reason, if it disabled it."""
        slot = self._slot(model, version)
        extra: dict[str, Any] = {"cache_hits_unprofiled": self.unprofiled.get(model, 0)}
        if self.worker is not None:
            extra["worker"] = self.worker
            extra["scope"] = (
                "this worker's share of the traffic (serve --workers: each worker monitors "
                "the requests it serves; a sample of the model's traffic)"
            )
        if slot.monitor is not None and disabled is None:
            return {**slot.monitor.report(), **extra}
        base: dict[str, Any] = {
            "model": model,
            "version": str(version),
            "alarm": False,
            "features": [],
            "history": [],
        }
        if slot.monitor is not None:
            base = slot.monitor.report()
        error = slot.error if disabled is None else f"drift monitor disabled: {disabled}"
        return {**base, **extra, "enabled": False, "error": error}

    def monitors(self) -> Iterator[tuple[str, int, Any]]:
        """(model, version, monitor) of every built monitor, for /metrics."""
        for (name, version), slot in list(self._slots.items()):
            if slot.monitor is not None:
                yield name, version, slot.monitor


def _batched(monitor: Any, records: list[Record]) -> list[Any]:
    """The profiles of ``records``: for a batching model one profiler call over their rows
    stacked together when every tensor has the same trailing shape (each request counts as
    the rows it carried either way), else one call per request."""
    import numpy as np

    sources = [(r.model_inputs or {}, r.model_outputs or {}, r.extra or {}) for r in records]
    if len(sources) > 1 and monitor.profiler.batching:
        stacked: list[dict[str, np.ndarray]] = []
        for i in range(3):
            first = sources[0][i]
            names = first.keys()
            if any(s[i].keys() != names for s in sources):
                break
            parts: dict[str, np.ndarray] = {}
            try:
                for name in names:
                    arrays = [s[i][name] for s in sources]
                    if i == 2:  # side data: one row per request, as the profiler reads it
                        arrays = [np.reshape(a, (-1, *np.shape(a)[-1:])) for a in arrays]
                    # A trailing shape that differs raises; the model's declared datatype
                    # makes the dtypes alike (and a promotion would not change a feature).
                    parts[name] = np.concatenate(arrays)
            except ValueError:
                break
            stacked.append(parts)
        if len(stacked) == 3:
            return [monitor.profiler.profile(*stacked)]
    return [monitor.profiler.profile(*s) for s in sources]
