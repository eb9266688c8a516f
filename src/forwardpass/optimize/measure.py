"""Latency, throughput and memory of one model file on one set of execution providers.

By default each candidate is measured in a fresh Python process (``python -m
forwardpass.optimize.worker``), so one candidate's allocations, thread pools and arena do not
colour the next one's numbers, and peak memory is the process's own high-water mark
(``VmHWM``) above its baseline after imports. ``isolate=False`` measures in this process
(faster, for tests): memory is then the growth of resident memory, a rougher figure.

Latency is measured with one intra-op thread unless told otherwise, since that is what a
served model instance gets by default and the figure least disturbed by other load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MeasureSettings", "Performance", "measure", "open_session", "run_spec"]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_session(path: Path, providers: Sequence[str], threads: int) -> Any:
    """An ONNX Runtime session as the measurements use it (sequential, ``threads`` intra-op)."""
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
    if not settings.isolate:
        return Performance(**_run(path, inputs, providers, settings, batching, max_batch))
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
    return Performance(**json.loads(done.stdout.strip().splitlines()[-1]))


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
