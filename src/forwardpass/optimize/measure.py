"""Latency, throughput and memory of one model file on one set of execution providers.

By default each candidate is measured in a fresh Python process (``python -m
forwardpass.optimize.worker``), so one candidate's allocations, thread pools and arena do not
colour the next one's numbers, and peak memory is the process's own high-water mark
(``VmHWM``) above its baseline after imports. ``isolate=False`` measures in this process
(faster, for tests): memory is then the growth of resident memory, a rougher figure.

Latency is measured with one intra-op thread unless told otherwise, since that is what a
served model instance gets by default and the figure least disturbed by other load.

Sub-millisecond timings drift with whatever else the machine does, so one measurement per
candidate decides by luck. :func:`measure_all` measures the candidates interleaved, in
``rounds`` (original, candidate 1, candidate 2, …, original, candidate 1, …), each round with a
share of the iterations and time: a drift then touches every candidate alike, each candidate's
batch-1 p50 of every round is kept (``rounds_p50_ms``), and the selection compares a candidate
with the original round by round and against the original's own spread between rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MeasureSettings",
    "Performance",
    "measure",
    "measure_all",
    "open_session",
    "run_spec",
]


@dataclass(frozen=True, slots=True)
class MeasureSettings:
    """How hard to measure: threads, warm-up, iterations and a time cap per batch size."""

    threads: int = 1
    warmup: int = 5
    iterations: int = 200
    #: Stop a batch size's loop after this long even if ``iterations`` are not done (min 5 runs).
    max_seconds: float = 3.0
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    isolate: bool = True
    #: Interleaved rounds over all candidates; ``iterations`` and ``max_seconds`` are shared
    #: out between them.
    rounds: int = 3

    def per_round(self) -> MeasureSettings:
        """The settings of one round (at least 5 timed runs each)."""
        from dataclasses import replace

        return replace(
            self,
            iterations=max(5, -(-self.iterations // self.rounds)),
            max_seconds=self.max_seconds / self.rounds,
            rounds=1,
        )


@dataclass(frozen=True, slots=True)
class Performance:
    """What one candidate costs to run."""

    p50_ms: float
    p99_ms: float
    best_batch: int
    best_p50_ms: float
    best_p99_ms: float
    #: Samples per second at ``best_batch``.
    throughput: float
    peak_memory_mb: float
    memory_kind: str
    #: Per batch size: p50, p99 (ms) and samples/s.
    by_batch: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Batch-1 p50 of each interleaved round (``p50_ms`` is their median).
    rounds_p50_ms: tuple[float, ...] = ()

    @property
    def spread(self) -> float | None:
        """(slowest − fastest round) / median: this candidate's own noise; None for 1 round."""
        if len(self.rounds_p50_ms) < 2 or self.p50_ms <= 0:
            return None
        return (max(self.rounds_p50_ms) - min(self.rounds_p50_ms)) / self.p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rounds_p50_ms": list(self.rounds_p50_ms), "spread": self.spread}


def open_session(path: Path, providers: Sequence[str], threads: int) -> Any:
    """An ONNX Runtime session as the measurements use it (sequential, ``threads`` intra-op).

    A provider list ``["openvino:CPU:<precision>"]`` opens the file with the OpenVINO runtime
    instead (:class:`forwardpass.runtime.openvino.OpenVinoSession`, the same ``run``).
    """
    if providers and providers[0].startswith("openvino:"):
        from forwardpass.runtime.openvino import OpenVinoSession

        return OpenVinoSession(path, providers[0], threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers))


def _memory_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _batch(inputs: Mapping[str, np.ndarray], size: int, batching: bool) -> dict[str, np.ndarray]:
    if not batching:
        return {k: v[0] for k, v in inputs.items()}
    count = len(next(iter(inputs.values())))
    index = np.arange(size) % count
    return {k: np.ascontiguousarray(v[index]) for k, v in inputs.items()}


def _time(session: Any, feed: dict[str, np.ndarray], settings: MeasureSettings) -> np.ndarray:
    for _ in range(settings.warmup):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + settings.max_seconds
    while len(times) < settings.iterations and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return np.asarray(times)


def _run(
    path: Path,
    inputs: Mapping[str, np.ndarray],
    providers: Sequence[str],
    settings: MeasureSettings,
    batching: bool,
    max_batch: int,
) -> dict[str, Any]:
    before = _memory_kb("VmRSS")
    session = open_session(path, providers, settings.threads)
    sizes = sorted({1, *(b for b in settings.batch_sizes if batching and b <= max_batch)})
    by_batch: dict[str, dict[str, float]] = {}
    for size in sizes:
        times = _time(session, _batch(inputs, size, batching), settings)
        p50 = float(np.percentile(times, 50))
        by_batch[str(size)] = {
            "p50_ms": p50,
            "p99_ms": float(np.percentile(times, 99)),
            "throughput": size * 1000.0 / p50 if p50 > 0 else 0.0,
        }
    if settings.isolate:
        peak, kind = _memory_kb("VmHWM"), "peak RSS of the measuring process above its baseline"
    else:
        peak, kind = _memory_kb("VmRSS"), "RSS growth in the optimizing process (not isolated)"
    memory = max(0.0, (peak or 0.0) - (before or 0.0)) / 1024.0
    best = max(by_batch, key=lambda b: by_batch[b]["throughput"])
    return {
        "p50_ms": by_batch["1"]["p50_ms"],
        "p99_ms": by_batch["1"]["p99_ms"],
        "best_batch": int(best),
        "best_p50_ms": by_batch[best]["p50_ms"],
        "best_p99_ms": by_batch[best]["p99_ms"],
        "throughput": by_batch[best]["throughput"],
        "peak_memory_mb": memory,
        "memory_kind": kind,
        "by_batch": by_batch,
    }


def _one(
    path: Path,
    inputs: Mapping[str, np.ndarray],
    providers: Sequence[str],
    settings: MeasureSettings,
    batching: bool,
    max_batch: int,
) -> dict[str, Any]:
    """One round of one file: in this process, or in a fresh one when ``settings.isolate``."""
    if not settings.isolate:
        return _run(path, inputs, providers, settings, batching, max_batch)
    with tempfile.TemporaryDirectory(prefix="forwardpass-measure-") as tmp:
        data = Path(tmp) / "inputs.npz"
        np.savez(data, **{k: np.asarray(v) for k, v in inputs.items()})  # type: ignore[arg-type]
        spec = {
            "model": str(path),
            "inputs": str(data),
            "providers": list(providers),
            "settings": asdict(settings),
            "batching": batching,
            "max_batch": max_batch,
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads))
        done = subprocess.run(
            [sys.executable, "-m", "forwardpass.optimize.worker", str(Path(tmp) / "spec.json")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuntimeError(f"measuring process failed: {tail[0]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _combine(rounds: Sequence[Mapping[str, Any]]) -> Performance:
    """The rounds of one candidate as one :class:`Performance` (medians; memory: the peak)."""
    median = lambda values: float(np.median(values))  # noqa: E731
    by_batch = {
        size: {
            key: median([r["by_batch"][size][key] for r in rounds])
            for key in rounds[0]["by_batch"][size]
        }
        for size in rounds[0]["by_batch"]
    }
    best = max(by_batch, key=lambda b: by_batch[b]["throughput"])
    return Performance(
        p50_ms=by_batch["1"]["p50_ms"],
        p99_ms=by_batch["1"]["p99_ms"],
        best_batch=int(best),
        best_p50_ms=by_batch[best]["p50_ms"],
        best_p99_ms=by_batch[best]["p99_ms"],
        throughput=by_batch[best]["throughput"],
        peak_memory_mb=max(r["peak_memory_mb"] for r in rounds),
        memory_kind=rounds[0]["memory_kind"],
        by_batch=by_batch,
        rounds_p50_ms=tuple(r["p50_ms"] for r in rounds),
    )


def measure_all(
    paths: Mapping[str, Path],
    inputs: Mapping[str, np.ndarray],
    providers: Sequence[str],
    settings: MeasureSettings,
    *,
    batching: bool,
    max_batch: int,
    progress: Callable[[int, int, str], None] | None = None,
    providers_for: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Performance | Exception]:
    """Measure every file of ``paths`` in interleaved rounds (see the module docstring).

    ``providers_for`` gives a candidate providers of its own (the original on ONNX Runtime's
    CPU provider, the others on OpenVINO); the rest use ``providers``. A file that fails to
    run is dropped from the later rounds; its entry is the exception.
    """
    own = providers_for or {}
    per_round = settings.per_round()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    failed: dict[str, Exception] = {}
    total, done = settings.rounds * len(paths), 0
    for round_ in range(settings.rounds):
        for name, path in paths.items():
            done += 1
            if name in failed:
                continue
            if progress is not None:
                progress(done - 1, total, f"measuring {name} (round {round_ + 1})")
            try:
                results[name].append(
                    _one(path, inputs, own.get(name, providers), per_round, batching, max_batch)
                )
            except Exception as exc:  # one candidate's failure must not stop the others
                failed[name] = exc
    return {name: failed.get(name) or _combine(results[name]) for name in paths}


def measure(
    path: Path,
    inputs: Mapping[str, np.ndarray],
    providers: Sequence[str],
    settings: MeasureSettings,
    *,
    batching: bool,
    max_batch: int,
) -> Performance:
    """Measure ``path`` on ``inputs`` (a leading sample axis; tiled to each batch size)."""
    result = measure_all(
        {"model": path}, inputs, providers, settings, batching=batching, max_batch=max_batch
    )["model"]
    if isinstance(result, Exception):
        raise result
    return result


def run_spec(spec_path: str) -> None:
    """The measuring process: read the spec file, print the result as one JSON line."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    settings = MeasureSettings(
        **{**spec["settings"], "batch_sizes": tuple(spec["settings"]["batch_sizes"])}
    )
    with np.load(spec["inputs"], allow_pickle=False) as npz:
        inputs = {k: npz[k] for k in npz.files}
    result = _run(
        Path(spec["model"]),
        inputs,
        spec["providers"],
        settings,
        spec["batching"],
        spec["max_batch"],
    )
    print(json.dumps(result))
