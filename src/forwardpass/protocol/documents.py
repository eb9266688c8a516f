"""The JSON documents of the HTTP protocol, rendered from the engine's typed results.

One function per document of Triton's HTTP API (model metadata, repository index, statistics,
server metadata); the gRPC adapter renders the same results as protobuf messages instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from forwardpass.monitor.logsettings import LogSettings
from forwardpass.monitor.trace import TraceSettings
from forwardpass.results import (
    BatchStatistics,
    Duration,
    IndexEntry,
    ModelMetadata,
    ModelStatistics,
    TensorMetadata,
)

__all__ = [
    "index_document",
    "log_settings_document",
    "metadata_document",
    "server_document",
    "statistics_document",
    "trace_settings_document",
]


def _tensor(t: TensorMetadata) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype.value, "shape": list(t.shape)}


def metadata_document(meta: ModelMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [_tensor(t) for t in meta.inputs],
        "outputs": [_tensor(t) for t in meta.outputs],
    }


def index_document(entries: Iterable[IndexEntry]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in entries:
        if e.state is None:
            out.append({"name": e.name})
            continue
        item: dict[str, Any] = {
            "name": e.name,
            "version": e.version,
            "state": e.state.value,
            "reason": e.reason,
        }
        if e.optimized_from is not None:
            item["optimized_from"] = e.optimized_from
            item["optimization"] = e.optimization
        if e.execution:
            item["execution"] = [
                {"providers": list(x.providers), "precision": x.precision, "fallback": x.fallback}
                for x in e.execution
            ]
        out.append(item)
    return out


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def _batch(b: BatchStatistics) -> dict[str, Any]:
    return {
        "batch_size": b.batch_size,
        "compute_input": _duration(b.compute_input),
        "compute_infer": _duration(b.compute_infer),
        "compute_output": _duration(b.compute_output),
    }


def _model_stats(s: ModelStatistics) -> dict[str, Any]:
    i = s.inference_stats
    return {
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(i.success),
            "fail": _duration(i.fail),
            "queue": _duration(i.queue),
            "compute_input": _duration(i.compute_input),
            "compute_infer": _duration(i.compute_infer),
            "compute_output": _duration(i.compute_output),
            "cache_hit": _duration(i.cache_hit),
            "cache_miss": _duration(i.cache_miss),
        },
        "response_stats": {},
        "batch_stats": [_batch(b) for b in s.batch_stats],
        "memory_usage": [],
    }


def statistics_document(stats: Sequence[ModelStatistics]) -> dict[str, Any]:
    return {"model_stats": [_model_stats(s) for s in stats]}


def server_document(name: str, version: str, extensions: Iterable[str]) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": list(extensions)}


def trace_settings_document(settings: TraceSettings) -> dict[str, str | list[str]]:
    """Triton's trace settings: every value a string, ``trace_level`` a list of strings."""
    return {
        "trace_level": list(settings.level) or ["OFF"],
        "trace_rate": str(settings.rate),
        "trace_count": str(settings.count),
        "log_frequency": str(settings.log_frequency),
        "trace_file": settings.file,
        "trace_mode": settings.mode,
    }


def log_settings_document(settings: LogSettings) -> dict[str, str | bool | int]:
    """Triton's log settings: booleans, an integer verbose level, strings."""
    return {
        "log_file": settings.log_file,
        "log_info": settings.log_info,
        "log_warning": settings.log_warning,
        "log_error": settings.log_error,
        "log_verbose_level": settings.log_verbose_level,
        "log_format": settings.log_format,
    }
