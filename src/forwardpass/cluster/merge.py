"""One server's view of N workers: statistics and Prometheus metrics summed over them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields

from forwardpass.results import BatchStatistics, Duration, InferenceStatistics, ModelStatistics

__all__ = ["merge_metrics", "merge_statistics"]


def _add(a: Duration, b: Duration) -> Duration:
    return Duration(a.count + b.count, a.ns + b.ns)


def _add_inference(a: InferenceStatistics, b: InferenceStatistics) -> InferenceStatistics:
    return InferenceStatistics(
        **{f.name: _add(getattr(a, f.name), getattr(b, f.name)) for f in fields(a)}
    )


def _add_batches(
    a: Sequence[BatchStatistics], b: Sequence[BatchStatistics]
) -> tuple[BatchStatistics, ...]:
    by_size = {s.batch_size: s for s in a}
    for s in b:
        have = by_size.get(s.batch_size)
        by_size[s.batch_size] = (
            s
            if have is None
            else BatchStatistics(
                s.batch_size,
                _add(have.compute_input, s.compute_input),
                _add(have.compute_infer, s.compute_infer),
                _add(have.compute_output, s.compute_output),
            )
        )
    return tuple(by_size[k] for k in sorted(by_size))


def merge_statistics(per_worker: Iterable[Sequence[ModelStatistics]]) -> list[ModelStatistics]:
    """Each worker's statistics → one list: counts and durations summed per model version,
    the latest ``last_inference``. Versions keep the first worker's order."""
    merged: dict[tuple[str, str], ModelStatistics] = {}
    for stats in per_worker:
        for s in stats:
            key = (s.name, s.version)
            have = merged.get(key)
            merged[key] = (
                s
                if have is None
                else ModelStatistics(
                    s.name,
                    s.version,
                    max(have.last_inference, s.last_inference),
                    have.inference_count + s.inference_count,
                    have.execution_count + s.execution_count,
                    _add_inference(have.inference_stats, s.inference_stats),
                    _add_batches(have.batch_stats, s.batch_stats),
                )
            )
    return list(merged.values())


#: Gauges whose value says "this is so" (1) rather than "this many": the workers' values are
#: not added but the largest kept.
_FLAG_GAUGES = frozenset({"forwardpass_execution_provider"})


def merge_metrics(per_worker: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Prometheus text expositions of ``(worker index, pid, text)`` → one exposition.

    Counters and gauges are summed per label set (flag gauges keep their largest value),
    histograms bucket by bucket, so the sums are what one process serving every request would
    report. Two metrics are added per worker, labelled ``worker`` and ``pid``:
    ``forwardpass_worker_up`` (1) and ``forwardpass_worker_request_success`` (its successful
    requests over every model), which show how the kernel spread the connections.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    up = GaugeMetricFamily(
        "forwardpass_worker_up", "Worker processes answering (1 each)", labels=["worker", "pid"]
    )
    served = CounterMetricFamily(
        "forwardpass_worker_request_success",
        "Successful inference requests per worker process, over every model",
        labels=["worker", "pid"],
    )
    for index, pid, text in per_worker:
        up.add_metric([str(index), str(pid)], 1)
        successes = 0.0
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            sums = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.name in _FLAG_GAUGES:
                    sums[key] = max(sums.get(key, sample.value), sample.value)
                else:
                    sums[key] = sums.get(key, 0.0) + sample.value
                if sample.name == "forwardpass_request_success_total":
                    successes += sample.value
        served.add_metric([str(index), str(pid)], successes)
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()
            yield up
            yield served

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)
