"""Summing workers' statistics and Prometheus expositions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from forwardpass.cluster.merge import merge_metrics, merge_statistics
from forwardpass.results import BatchStatistics, Duration, InferenceStatistics, ModelStatistics


def _stats(count: int, last: int, batch: int) -> ModelStatistics:
    d = Duration(count, count * 10)
    return ModelStatistics(
        "m",
        "1",
        last_inference=last,
        inference_count=count,
        execution_count=count,
        inference_stats=InferenceStatistics(success=d, queue=d),
        batch_stats=(BatchStatistics(batch, d, d, d),),
    )


def test_statistics_are_summed_per_version_and_batch_size() -> None:
    (merged,) = merge_statistics([[_stats(2, 100, 1)], [_stats(3, 50, 1)], [_stats(1, 7, 4)]])
    assert merged.inference_count == 6 and merged.execution_count == 6
    assert merged.last_inference == 100
    assert merged.inference_stats.success == Duration(6, 60)
    assert merged.inference_stats.fail == Duration()
    assert [(b.batch_size, b.compute_infer) for b in merged.batch_stats] == [
        (1, Duration(5, 50)),
        (4, Duration(1, 10)),
    ]


_TEXT = """# HELP forwardpass_request_success Successful inference requests
# TYPE forwardpass_request_success counter
forwardpass_request_success_total{{model="m",version="1"}} {n}
# HELP forwardpass_pending_requests Requests queued or running
# TYPE forwardpass_pending_requests gauge
forwardpass_pending_requests{{model="m",version="1"}} {n}
# HELP forwardpass_execution_provider Execution providers in use
# TYPE forwardpass_execution_provider gauge
forwardpass_execution_provider{{fallback="0",model="m",provider="CPU",version="1"}} 1.0
# HELP forwardpass_batch_size Rows per executed batch
# TYPE forwardpass_batch_size histogram
forwardpass_batch_size_bucket{{le="1.0",model="m",version="1"}} {n}
forwardpass_batch_size_bucket{{le="+Inf",model="m",version="1"}} {n}
forwardpass_batch_size_count{{model="m",version="1"}} {n}
forwardpass_batch_size_sum{{model="m",version="1"}} {n}
"""


def test_metrics_are_summed_and_flags_kept() -> None:
    text = merge_metrics(
        [(0, 11, _TEXT.format(n=2).encode()), (1, 12, _TEXT.format(n=5).encode())]
    ).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("model", "m"), ("version", "1"))
    assert samples[("forwardpass_request_success_total", labels)] == 7
    assert samples[("forwardpass_pending_requests", labels)] == 7
    assert samples[("forwardpass_batch_size_bucket", (("le", "+Inf"), *labels))] == 7
    assert samples[("forwardpass_batch_size_count", labels)] == 7
    provider = (("fallback", "0"), ("model", "m"), ("provider", "CPU"), ("version", "1"))
    assert samples[("forwardpass_execution_provider", provider)] == 1
    assert samples[("forwardpass_worker_up", (("pid", "12"), ("worker", "1")))] == 1
    assert (
        samples[("forwardpass_worker_request_success_total", (("pid", "11"), ("worker", "0")))] == 2
    )
