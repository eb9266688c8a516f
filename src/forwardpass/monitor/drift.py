"""Streaming data drift: sliding windows of traffic tested against a reference profile.

A :class:`DriftDetector` keeps the last ``window`` rows of every feature (and embedding) and,
every ``step`` rows once the window is full, tests the window against the reference:

- numeric features: Kolmogorov–Smirnov (or Cramér–von Mises), with PSI and Wasserstein
  distance (also in reference standard deviations) as effect sizes;
- categorical features and predicted classes: chi-squared on the category counts, PSI;
- the embedding, when the model has one: MMD² with a permutation p-value.

A :class:`DriftMonitor` is the sink for one model version: ``observe(records)`` profiles
each :class:`DriftRecord` and feeds the detector; it persists its state beside the model
after every evaluation, so windows and history survive a restart.

How the alarm threshold follows from the user's false-alarm rate
---------------------------------------------------------------
The user sets ``false_alarm_rate`` = r: the share of windows of undrifted traffic that may
raise an alarm. One window runs k tests (features, outputs, embedding); it alarms when any
test rejects after a correction for multiplicity at family level α = r:

- Bonferroni rejects a test with p ≤ r / k, so P(any of k true nulls rejected) ≤ r whatever
  the dependence between features (and correlated features are the rule in tabular data);
- Benjamini–Hochberg (``fdr``) controls the false discovery rate at r; on undrifted traffic
  every null is true and then FDR = P(any rejection), so the window's false-alarm probability
  is again ≤ r (for independent or positively dependent tests), while under real drift it
  rejects more features than Bonferroni does.

A bare p < 0.05 per test would instead alarm in about 1 − 0.95^k of clean windows (79 % for
the 30 breast-cancer columns). Overlapping windows do not change the false-alarm probability
of each window, which is what r bounds; they make consecutive windows' verdicts correlated
(false alarms, when they happen, come in short runs of up to window/step evaluations), and
they shorten the detection delay to about one step once enough drifted rows are in the window.
A user who wants a rate per N requests instead sets r = rate · step / N.

Two details keep the bound honest: p-values are two-sample (the reference is a finite sample
too, so its own noise is accounted for), and the MMD permutation count is chosen so that the
smallest attainable p-value, 1 / (B + 1), is well below the per-test level r / k (at least
``2k / r`` permutations unless set).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.monitor.profile import CATEGORICAL, Profile
from forwardpass.monitor.reference import Reference
from forwardpass.monitor.settings import DriftSettings
from forwardpass.monitor.statistics import (
    CategoricalReference,
    MmdReference,
    NumericBatch,
    NumericReference,
    chi2_test,
    cvm_test,
    ks_test,
    mmd_test,
    psi,
    reject,
    wasserstein,
)

__all__ = ["DriftDetector", "DriftMonitor", "DriftRecord", "FeatureResult", "WindowResult"]

log = logging.getLogger("forwardpass.monitor.drift")

EMBEDDING = "embedding"
_MAX_PERMUTATIONS = 5000


@dataclass(slots=True)
class DriftRecord:
    """One request as the drift monitor sees it (built off the request path's data).

    ``inputs`` are the tensors the model was given (after declared processing), ``outputs``
    the model's own outputs (before output processing), ``extra`` the side data input
    processing produced (an image step's geometry). A non-batching model's tensors have no
    row axis.
    """

    model: str
    version: int
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    request_id: str = ""
    status: str = "ok"


@dataclass(frozen=True, slots=True)
class FeatureResult:
    """One feature's test on one window."""

    feature: str
    kind: str
    test: str
    statistic: float
    p_value: float
    drift: bool
    psi: float | None = None
    wasserstein: float | None = None
    wasserstein_sd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind,
            "test": self.test,
            "statistic": _num(self.statistic),
            "p_value": _num(self.p_value),
            "drift": self.drift,
            "psi": _num(self.psi),
            "wasserstein": _num(self.wasserstein),
            "wasserstein_sd": _num(self.wasserstein_sd),
        }


def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


@dataclass(frozen=True, slots=True)
class WindowResult:
    """The verdict on one window: every feature's test and whether the window alarms."""

    #: Rows seen when the window was evaluated (the window is rows end-size .. end).
    end: int
    time: float
    alarm: bool
    features: tuple[FeatureResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "end": self.end,
            "time": self.time,
            "alarm": self.alarm,
            "features": [f.to_dict() for f in self.features],
        }

    def summary(self) -> dict[str, Any]:
        """The compact form kept in the history (for charts of drift over time)."""
        return {
            "end": self.end,
            "time": round(self.time, 3),
            "alarm": self.alarm,
            "p_value": {f.feature: _num(f.p_value) for f in self.features},
            "statistic": {f.feature: _num(f.statistic) for f in self.features},
            "drift": [f.feature for f in self.features if f.drift],
        }


class DriftDetector:
    """Sliding windows over feature rows, tested against a :class:`Reference`."""

    def __init__(self, reference: Reference, settings: DriftSettings, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in reference.features]
        if missing:
            raise ValueError(
                f"the reference profile has no feature(s) {missing}; rebuild it "
                "(`forwardpass monitor reference`) after changing the model or its processing"
            )
        self.settings = settings
        self.names = tuple(names)
        self.kinds = {n: reference.kinds.get(n, "numeric") for n in names}
        for n in settings.categorical:
            if n in self.kinds:
                self.kinds[n] = CATEGORICAL
        self.refs: dict[str, NumericReference | CategoricalReference] = {}
        for n in names:
            values = reference.features[n]
            if self.kinds[n] == CATEGORICAL:
                self.refs[n] = CategoricalReference.of(values)
            else:
                self.refs[n] = NumericReference.of(values)
        #: Numeric features tested together (KS), by reference size: (names, batch).
        self._batches: list[tuple[tuple[str, ...], NumericBatch]] = []
        if settings.numeric_test == "ks":
            by_size: dict[int, list[str]] = {}
            for n in names:
                ref = self.refs[n]
                if isinstance(ref, NumericReference):
                    by_size.setdefault(len(ref.values), []).append(n)
            for group in by_size.values():
                refs = [self.refs[n] for n in group]
                self._batches.append((tuple(group), NumericBatch.of(refs)))  # type: ignore[arg-type]
        self.mmd: MmdReference | None = None
        if reference.embedding is not None and settings.embedding != "none":
            self.mmd = MmdReference.of(reference.embedding)
        self.reference_rows = reference.rows
        self.tests = len(self.names) + (1 if self.mmd is not None else 0)
        self.permutations = settings.permutations or min(
            _MAX_PERMUTATIONS, max(200, math.ceil(2 * self.tests / settings.false_alarm_rate))
        )
        size = settings.window
        self._buffers: dict[str, np.ndarray] = {}
        for n in names:
            column = reference.features[n]
            # Strings in an object buffer: a fixed-width one would cut longer new values.
            dtype = object if column.dtype.kind in "USO" else column.dtype
            self._buffers[n] = np.zeros(size, dtype=dtype)
        self._embedding: np.ndarray | None = None
        if self.mmd is not None:
            self._embedding = np.zeros((size, self.mmd.values.shape[1]), dtype=np.float32)
        self.seen = 0
        self.last: WindowResult | None = None
        self.history: list[dict[str, Any]] = []
        self._evaluations = 0

    @property
    def filled(self) -> int:
        return min(self.seen, self.settings.window)

    @property
    def per_test_level(self) -> float:
        return self.settings.false_alarm_rate / max(self.tests, 1)

    def add(self, profile: Profile) -> list[WindowResult]:
        """Append the rows of ``profile``; the windows they complete, evaluated."""
        n = len(profile)
        if self._embedding is not None and profile.embedding is None:
            raise ValueError("the record has no embedding but the reference has one")
        results: list[WindowResult] = []
        done = 0
        size, step = self.settings.window, self.settings.step
        while done < n:
            # Rows up to the next evaluation boundary: seen == size + j * step.
            if self.seen < size:
                boundary = size
            else:
                boundary = self.seen + step - (self.seen - size) % step
            take = min(n - done, boundary - self.seen)
            self._push(profile, done, take)
            done += take
            if self.seen >= size and (self.seen - size) % step == 0:
                results.append(self.evaluate())
        return results

    def _push(self, profile: Profile, start: int, count: int) -> None:
        size = self.settings.window
        positions = (self.seen + np.arange(count)) % size
        for name in self.names:
            self._buffers[name][positions] = profile.features[name][start : start + count]
        if self._embedding is not None:
            assert profile.embedding is not None
            self._embedding[positions] = profile.embedding[start : start + count]
        self.seen += count

    def evaluate(self) -> WindowResult:
        """Test the current window (which must be full) and keep the result."""
        results: list[tuple[str, str, float, float, float | None, float | None, float | None]]
        results = []
        batched: dict[str, tuple[float, float, float, float]] = {}
        for group, batch in self._batches:
            d, p_ks, w_all, psi_all = batch.test(np.stack([self._buffers[n] for n in group]))
            for i, name in enumerate(group):
                batched[name] = (float(d[i]), float(p_ks[i]), float(w_all[i]), float(psi_all[i]))
        for name in self.names:
            ref = self.refs[name]
            values = self._buffers[name]
            if name in batched:
                d_ks, p_value, w, psi_value = batched[name]
                assert isinstance(ref, NumericReference)
                w_sd = w / ref.std if ref.std > 0 else None
                results.append((name, "ks", d_ks, p_value, psi_value, w, w_sd))
            elif isinstance(ref, CategoricalReference):
                t = chi2_test(ref, values)
                results.append((name, "chi2", t.statistic, t.p_value, psi(ref, values), None, None))
            else:
                test = ks_test if self.settings.numeric_test == "ks" else cvm_test
                t = test(ref, values)
                w = wasserstein(ref, values)
                w_sd = w / ref.std if ref.std > 0 else None
                results.append(
                    (
                        name,
                        self.settings.numeric_test,
                        t.statistic,
                        t.p_value,
                        psi(ref, values),
                        w,
                        w_sd,
                    )
                )
        if self.mmd is not None:
            assert self._embedding is not None
            t = mmd_test(self.mmd, self._embedding, self.permutations, seed=self._evaluations)
            results.append((EMBEDDING, "mmd", t.statistic, t.p_value, None, None, None))
        p = np.array([r[3] for r in results])
        rejected = reject(p, self.settings.false_alarm_rate, self.settings.correction)
        features = tuple(
            FeatureResult(
                feature=r[0],
                kind=("embedding" if r[1] == "mmd" else self.kinds[r[0]]),
                test=r[1],
                statistic=r[2],
                p_value=r[3],
                drift=bool(rejected[i]),
                psi=r[4],
                wasserstein=r[5],
                wasserstein_sd=r[6],
            )
            for i, r in enumerate(results)
        )
        result = WindowResult(self.seen, time.time(), bool(rejected.any()), features)
        self._evaluations += 1
        self.last = result
        self.history.append(result.summary())
        del self.history[: -self.settings.history]
        return result

    # ------------------------------------------------------------------ persistence
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The window in time order (oldest first), for saving."""
        size = self.settings.window
        count = self.filled
        order = (self.seen - count + np.arange(count)) % size
        arrays = {f"window/{n}": _storable(self._buffers[n][order]) for n in self.names}
        if self._embedding is not None:
            arrays["window/" + EMBEDDING] = self._embedding[order]
        return arrays

    def state_meta(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "evaluations": self._evaluations,
            "last": None if self.last is None else self.last.to_dict(),
            "history": self.history,
        }

    def restore(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Put back a saved window (the same settings and reference; checked by the caller)."""
        count = len(arrays[f"window/{self.names[0]}"]) if self.names else 0
        if self._embedding is not None and "window/" + EMBEDDING in arrays:
            count = len(arrays["window/" + EMBEDDING])
        size = self.settings.window
        seen = int(meta["seen"])
        if count != min(seen, size):
            raise ValueError(f"saved window holds {count} rows for {seen} seen")
        positions = (seen - count + np.arange(count)) % size
        for n in self.names:
            self._buffers[n][positions] = arrays[f"window/{n}"]
        if self._embedding is not None:
            self._embedding[positions] = arrays["window/" + EMBEDDING]
        self.seen = seen
        self._evaluations = int(meta.get("evaluations", 0))
        self.history = list(meta.get("history", []))[-self.settings.history :]
        last = meta.get("last")
        if last is not None:
            self.last = WindowResult(
                int(last["end"]),
                float(last["time"]),
                bool(last["alarm"]),
                tuple(
                    FeatureResult(
                        feature=f["feature"],
                        kind=f["kind"],
                        test=f["test"],
                        statistic=_float(f["statistic"]),
                        p_value=_float(f["p_value"]),
                        drift=bool(f["drift"]),
                        psi=f["psi"],
                        wasserstein=f["wasserstein"],
                        wasserstein_sd=f["wasserstein_sd"],
                    )
                    for f in last["features"]
                ),
            )


def _storable(values: np.ndarray) -> np.ndarray:
    return values.astype(str) if values.dtype == object else values


def _float(x: float | None) -> float:
    return float("nan") if x is None else float(x)


class DriftMonitor:
    """The drift sink of one model version: ``observe(records)``, state on disk, a report.

    Built from a ready profiler (model features) and the loaded reference. An exception while
    observing propagates to the monitor hub, which disables the drift sink for the model; it
    never reaches a request.
    """

    def __init__(
        self,
        model: str,
        version: int,
        settings: DriftSettings,
        reference: Reference,
        profiler: Any,
        state_dir: Path | None,
        save_every_s: float = 0.0,
    ) -> None:
        self.model = model
        #: Evaluations write the state at most this often (0: after every one); an evaluation
        #: that alarms or clears always writes it, and so does :meth:`save` at shutdown.
        self.save_every_s = save_every_s
        self._saved_at = float("-inf")
        self.version = version
        self.settings = settings
        self.reference = reference
        self.profiler = profiler
        names = [c.name for c in profiler.columns]
        self.detector = DriftDetector(reference, settings, names)
        self.state_dir = state_dir
        self.state_error: str | None = None
        self.observed = 0
        self._lock = threading.Lock()
        if state_dir is not None:
            self._load_state()

    # ------------------------------------------------------------------ sink
    def observe(self, records: Sequence[DriftRecord]) -> list[WindowResult]:
        """Profile and add ``records`` (called off the request path, on the monitor hub's
        thread); the evaluations whose verdict differs from the one before (an alarm turning
        on or off). An exception propagates: the hub disables the drift sink for the model
        and ``/monitor`` reports why."""
        return self.add(
            [
                self.profiler.profile(r.inputs, r.outputs, r.extra)
                for r in records
                if r.status == "ok"
            ]
        )

    def add(self, profiles: Sequence[Profile], requests: int | None = None) -> list[WindowResult]:
        """Add profiled requests (one profile per request, or ``requests`` requests in all
        when profiles hold several); the alarm transitions, as ``observe``."""
        evaluated = False
        changes: list[WindowResult] = []
        for profile in profiles:
            with self._lock:
                before = self.alarm
                for result in self.detector.add(profile):
                    evaluated = True
                    if result.alarm != before:
                        changes.append(result)
                    before = result.alarm
        with self._lock:
            self.observed += len(profiles) if requests is None else requests
        if changes or (evaluated and time.monotonic() - self._saved_at >= self.save_every_s):
            self.save()
        return changes

    # ------------------------------------------------------------------ persistence
    def _state_files(self) -> tuple[Path, Path]:
        assert self.state_dir is not None
        return (
            self.state_dir / f"drift-v{self.version}.npz",
            self.state_dir / f"drift-v{self.version}.json",
        )

    def _identity(self) -> dict[str, Any]:
        return {"reference": self.reference.fingerprint, "settings": self.settings.to_dict()}

    def _load_state(self) -> None:
        npz, meta_file = self._state_files()
        if not npz.is_file() or not meta_file.is_file():
            return
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("identity") != self._identity():
                log.info(
                    "model %s version %s: drift state in %s is for another reference or "
                    "settings; starting afresh",
                    self.model,
                    self.version,
                    npz.parent,
                )
                return
            with np.load(npz, allow_pickle=False) as data:
                self.detector.restore(dict(data), meta)
            self.observed = int(meta.get("observed", 0))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.state_error = f"saved drift state not restored: {exc}"
            log.warning("model %s version %s: %s", self.model, self.version, self.state_error)

    def save(self) -> None:
        """Write the window, last result and history atomically (npz + json)."""
        if self.state_dir is None:
            return
        with self._lock:
            arrays = self.detector.state_arrays()
            meta = {
                **self.detector.state_meta(),
                "observed": self.observed,
                "identity": self._identity(),
            }
        npz, meta_file = self._state_files()
        self._saved_at = time.monotonic()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = npz.with_name(f".{npz.name}.tmp")
            with tmp.open("wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
            # The json names the state, so it is written last: a crash between the two
            # leaves an older json whose 'seen' no longer matches, which restore rejects.
            os.replace(tmp, npz)
            tmp_meta = meta_file.with_name(f".{meta_file.name}.tmp")
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp_meta, meta_file)
            self.state_error = None
        except OSError as exc:
            self.state_error = f"drift state not saved: {exc}"
            log.warning("model %s version %s: %s", self.model, self.version, self.state_error)

    # ------------------------------------------------------------------ reading
    def report(self) -> dict[str, Any]:
        """The JSON document of ``GET /v2/models/M/monitor``."""
        with self._lock:
            d = self.detector
            last = d.last
            return {
                "model": self.model,
                "version": str(self.version),
                "enabled": True,
                "error": None,
                "state_error": self.state_error,
                "alarm": bool(last.alarm) if last is not None else False,
                "settings": self.settings.to_dict(),
                "reference": {
                    "rows": self.reference.rows,
                    "source": self.reference.meta.get("source"),
                    "created": self.reference.meta.get("created"),
                    "version": self.reference.meta.get("version"),
                    "embedding": self.reference.meta.get("embedding"),
                },
                "tests": d.tests,
                "per_test_level": d.per_test_level,
                "permutations": d.permutations if d.mmd is not None else None,
                "observed_requests": self.observed,
                "window": {
                    "size": self.settings.window,
                    "step": self.settings.step,
                    "filled": d.filled,
                    "rows_seen": d.seen,
                    "evaluated_at": last.end if last is not None else None,
                    "start": max(last.end - self.settings.window, 0) if last is not None else None,
                },
                "features": [f.to_dict() for f in last.features] if last is not None else [],
                "history": list(d.history),
            }

    def scores(self) -> list[tuple[str, str, float]]:
        """(feature, test, value) for /metrics: each test's statistic, PSI and Wasserstein."""
        last = self.detector.last
        if last is None:
            return []
        out: list[tuple[str, str, float]] = []
        for f in last.features:
            out.append((f.feature, f.test, f.statistic))
            if f.psi is not None:
                out.append((f.feature, "psi", f.psi))
            if f.wasserstein is not None:
                out.append((f.feature, "wasserstein", f.wasserstein))
        return out

    @property
    def alarm(self) -> bool:
        last = self.detector.last
        return bool(last is not None and last.alarm)
