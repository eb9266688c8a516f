"""Per-version statistics and their Prometheus exposition."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_builders import run_with_engine
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InvalidArgument
from forwardpass.monitor.metrics import EngineCollector, metrics_renderer
from forwardpass.monitor.stats import BATCH_BUCKETS, LATENCY_BUCKETS_S, Histogram, ModelStats
from forwardpass.protocol.documents import statistics_document
from forwardpass.scheduling.batcher import BatchRecord
from forwardpass.types import InferRequest, Tensor

# --------------------------------------------------------------------------------- histogram


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    hist = Histogram((1.0, 2.0, 5.0))
    for value in (0.5, 1.0, 1.5, 2.0, 4.0, 7.0, 100.0):
        hist.observe(value)
    assert hist.buckets() == [("1.0", 2), ("2.0", 4), ("5.0", 5), ("+Inf", 7)]
    assert hist.count == 7
    assert hist.total == pytest.approx(116.0)


def test_histogram_bounds_are_inclusive_upper_limits() -> None:
    # Prometheus' le: a value equal to a bound falls into that bound's bucket.
    hist = Histogram((0.001, 0.01))
    hist.observe(0.001)
    assert hist.buckets() == [("0.001", 1), ("0.01", 1), ("+Inf", 1)]


def test_empty_histogram() -> None:
    hist = Histogram(BATCH_BUCKETS)
    buckets = hist.buckets()
    assert len(buckets) == len(BATCH_BUCKETS) + 1
    assert all(n == 0 for _, n in buckets)
    assert (hist.count, hist.total) == (0, 0.0)


def test_default_buckets_are_sorted() -> None:
    for bounds in (LATENCY_BUCKETS_S, BATCH_BUCKETS):
        assert list(bounds) == sorted(set(bounds))


# ---------------------------------------------------------------------------------- ModelStats


def record(size: int, requests: int, ok: bool = True, infer_ns: int = 1_000_000) -> BatchRecord:
    return BatchRecord(
        batch_size=size,
        requests=requests,
        queue_ns=tuple(2_000 * (i + 1) for i in range(requests)),
        input_ns=100,
        infer_ns=infer_ns,
        output_ns=200,
        ok=ok,
    )


def test_model_stats_counts_batches_and_requests() -> None:
    stats = ModelStats("m", "3")
    stats.on_batch(record(4, 2))
    stats.on_batch(record(4, 3))
    stats.on_batch(record(1, 1))
    stats.on_batch(record(2, 2, ok=False))
    for _ in range(6):
        stats.on_request(True, 5_000_000)
    stats.on_request(False, 1_000, "INTERNAL")
    stats.on_request(False, 1_000, "INTERNAL")
    stats.on_request(False, 1_000, "INVALID_ARG")

    assert stats.execution_count == 4  # failed batches executed too
    assert stats.inference_count == 9  # rows of successful batches only
    assert stats.fail_reasons == {"INTERNAL": 2, "INVALID_ARG": 1}
    triton = statistics_document([stats.snapshot()])["model_stats"][0]
    assert (triton["name"], triton["version"]) == ("m", "3")
    assert triton["inference_count"] == 9
    assert triton["execution_count"] == 4
    assert triton["last_inference"] > 0
    inference = triton["inference_stats"]
    assert inference["success"] == {"count": 6, "ns": 30_000_000}
    assert inference["fail"] == {"count": 3, "ns": 3_000}
    # queue: every request of every batch, failed ones included
    assert inference["queue"]["count"] == 8
    assert inference["queue"]["ns"] == (2_000 + 4_000) * 2 + (2_000 + 4_000 + 6_000) + 2_000
    # compute: per successful request, each batch's time counted once per request in it
    assert inference["compute_infer"] == {"count": 6, "ns": 6 * 1_000_000}
    assert inference["compute_input"] == {"count": 6, "ns": 6 * 100}
    assert inference["compute_output"] == {"count": 6, "ns": 6 * 200}
    assert inference["cache_hit"] == {"count": 0, "ns": 0}
    assert triton["batch_stats"] == [
        {
            "batch_size": 1,
            "compute_input": {"count": 1, "ns": 100},
            "compute_infer": {"count": 1, "ns": 1_000_000},
            "compute_output": {"count": 1, "ns": 200},
        },
        {
            "batch_size": 4,
            "compute_input": {"count": 2, "ns": 200},
            "compute_infer": {"count": 2, "ns": 2_000_000},
            "compute_output": {"count": 2, "ns": 400},
        },
    ]
    assert stats.batch_size.count == 4
    assert stats.queue_latency.count == 8
    assert stats.request_latency.count == 9


def test_fresh_stats_are_zero() -> None:
    triton = statistics_document([ModelStats("m", "1").snapshot()])["model_stats"][0]
    assert triton["last_inference"] == 0
    assert triton["batch_stats"] == []
    assert all(v == {"count": 0, "ns": 0} for v in triton["inference_stats"].values())


# -------------------------------------------------------------------------------- Prometheus


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_prometheus_text_parses_and_matches_the_counters(repo: Path) -> None:
    async def body(engine: Engine) -> str:
        x = Tensor("x", DataType.FP32, np.zeros((3, 3), np.float32))
        await asyncio.gather(*(engine.infer(InferRequest("add", [x])) for _ in range(4)))
        with pytest.raises(InvalidArgument):
            await engine.infer(InferRequest("add", []))
        return metrics_renderer(engine)().decode()

    text = run_with_engine(repo, body)
    found = families(text)
    assert set(found) >= {
        "forwardpass_request_success",
        "forwardpass_request_failure",
        "forwardpass_inference_count",
        "forwardpass_execution_count",
        "forwardpass_pending_requests",
        "forwardpass_request_duration_seconds",
        "forwardpass_queue_duration_seconds",
        "forwardpass_compute_duration_seconds",
        "forwardpass_batch_size",
    }
    add = {"model": "add", "version": "1"}
    success = found["forwardpass_request_success"]
    assert success.type == "counter"
    [sample] = samples(success, "forwardpass_request_success_total", **add)
    assert sample.value == 4
    [failure] = samples(
        found["forwardpass_request_failure"],
        "forwardpass_request_failure_total",
        reason="INVALID_ARG",
        **add,
    )
    assert failure.value == 1
    [rows] = samples(
        found["forwardpass_inference_count"], "forwardpass_inference_count_total", **add
    )
    assert rows.value == 12
    [executions] = samples(
        found["forwardpass_execution_count"], "forwardpass_execution_count_total", **add
    )
    assert 1 <= executions.value <= 4
    [pending] = samples(
        found["forwardpass_pending_requests"], "forwardpass_pending_requests", **add
    )
    assert (found["forwardpass_pending_requests"].type, pending.value) == ("gauge", 0)

    # Every model version has its series; the broken model has none.
    models = {s.labels["model"] for s in success.samples}
    assert models == {"add", "echo", "square"}
    assert {s.labels["version"] for s in success.samples if s.labels["model"] == "echo"} == {
        "1",
        "2",
        "3",
    }

    request = found["forwardpass_request_duration_seconds"]
    assert request.type == "histogram"
    buckets = samples(request, "forwardpass_request_duration_seconds_bucket", **add)
    assert [s.labels["le"] for s in buckets][-1] == "+Inf"
    assert len(buckets) == len(LATENCY_BUCKETS_S) + 1
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    [count] = samples(request, "forwardpass_request_duration_seconds_count", **add)
    [total] = samples(request, "forwardpass_request_duration_seconds_sum", **add)
    assert counts[-1] == count.value == 5
    assert total.value > 0

    batch = found["forwardpass_batch_size"]
    batch_buckets = samples(batch, "forwardpass_batch_size_bucket", **add)
    les = [float(s.labels["le"]) for s in batch_buckets]
    assert les[:-1] == [float(b) for b in BATCH_BUCKETS] and math.isinf(les[-1])
    [batch_sum] = samples(batch, "forwardpass_batch_size_sum", **add)
    assert batch_sum.value == 12  # rows over all batches


def test_collector_with_no_models_yields_empty_families(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()

    async def body(engine: Engine) -> list[Any]:
        return list(EngineCollector(engine).collect())

    collected = run_with_engine(root, body)
    assert {"forwardpass_request_success", "forwardpass_batch_size"} <= {m.name for m in collected}
    assert all(metric.samples == [] for metric in collected)
