"""Prometheus exposition of the engine's counters.

A custom collector reads :class:`ModelStats` at scrape time, so recording on the request path
costs a few integer additions and nothing here runs per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from forwardpass.generation.metrics import generation_metrics
from forwardpass.monitor.monitor_metrics import MonitoringCollector
from forwardpass.monitor.stats import Histogram
from forwardpass.scheduling.batcher import Batcher

if TYPE_CHECKING:
    from forwardpass.engine import Engine

__all__ = ["EngineCollector", "metrics_renderer"]

_LABELS = ["model", "version"]


def _histogram(name: str, doc: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=_LABELS)


def _add(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    family.add_metric(labels, hist.buckets(), hist.total)


class EngineCollector:
    """Yields forwardpass_* metrics for every loaded model version."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        success = CounterMetricFamily(
            "forwardpass_request_success", "Successful inference requests", labels=_LABELS
        )
        failure = CounterMetricFamily(
            "forwardpass_request_failure",
            "Failed inference requests by error code",
            labels=[*_LABELS, "reason"],
        )
        inferences = CounterMetricFamily(
            "forwardpass_inference_count", "Samples inferred (batch rows)", labels=_LABELS
        )
        executions = CounterMetricFamily(
            "forwardpass_execution_count", "Batches executed", labels=_LABELS
        )
        cache_hits = CounterMetricFamily(
            "forwardpass_cache_hits", "Requests answered from the response cache", labels=_LABELS
        )
        cache_misses = CounterMetricFamily(
            "forwardpass_cache_misses",
            "Response cache lookups that found nothing (the model ran)",
            labels=_LABELS,
        )
        pending = GaugeMetricFamily(
            "forwardpass_pending_requests", "Requests queued or running", labels=_LABELS
        )
        request = _histogram(
            "forwardpass_request_duration_seconds", "Time from validation to response"
        )
        queue = _histogram("forwardpass_queue_duration_seconds", "Time spent queued")
        compute = _histogram(
            "forwardpass_compute_duration_seconds", "Batch merge + forward pass + split time"
        )
        batch = _histogram("forwardpass_batch_size", "Rows per executed batch")
        preprocess = _histogram(
            "forwardpass_preprocess_duration_seconds", "Declared input processing per request"
        )
        postprocess = _histogram(
            "forwardpass_postprocess_duration_seconds", "Declared output processing per request"
        )
        providers = GaugeMetricFamily(
            "forwardpass_execution_provider",
            "Execution providers in use (1); fallback=1 where a requested provider was missing",
            labels=[*_LABELS, "provider", "fallback"],
        )
        # Adaptive batching's estimates (models that opted in), read at scrape time.
        adaptive = {
            key: GaugeMetricFamily(f"forwardpass_adaptive_{key}", doc, labels=_LABELS)
            for key, doc in (
                ("arrival_rate", "Estimated request arrival rate (requests/s)"),
                ("batch_fixed_seconds", "Estimated fixed cost of a batch, whatever its size"),
                ("batch_row_seconds", "Estimated cost of each row of a batch"),
                ("wait_seconds", "The last wait chosen for an idle instance (0: sent at once)"),
                ("batch_cap", "Rows a batch may take: the size measured to serve most rows/s"),
            )
        }
        for handle in self.engine.models():
            for version, loaded in sorted(handle.versions.items()):
                labels = [handle.name, str(version)]
                stats = loaded.stats
                success.add_metric(labels, stats.success_count)
                for reason, n in sorted(stats.fail_reasons.items()):
                    failure.add_metric([*labels, reason], n)
                inferences.add_metric(labels, stats.inference_count)
                executions.add_metric(labels, stats.execution_count)
                if handle.config.response_cache.enable:
                    cache_hits.add_metric(labels, stats.cache_hit_count)
                    cache_misses.add_metric(labels, stats.cache_miss_count)
                if loaded.batcher is not None:
                    pending.add_metric(labels, loaded.batcher.pending)
                if isinstance(loaded.batcher, Batcher) and loaded.batcher.adaptive is not None:
                    view = loaded.batcher.adaptive.view()
                    adaptive["arrival_rate"].add_metric(labels, view.arrival_rate_per_s)
                    adaptive["batch_fixed_seconds"].add_metric(labels, view.batch_fixed_s)
                    adaptive["batch_row_seconds"].add_metric(labels, view.batch_per_row_s)
                    adaptive["wait_seconds"].add_metric(labels, view.last_wait_s)
                    adaptive["batch_cap"].add_metric(labels, view.batch_cap)
                _add(request, labels, stats.request_latency)
                _add(queue, labels, stats.queue_latency)
                _add(compute, labels, stats.compute_latency)
                _add(batch, labels, stats.batch_size)
                if stats.preprocess_latency.count:
                    _add(preprocess, labels, stats.preprocess_latency)
                if stats.postprocess_latency.count:
                    _add(postprocess, labels, stats.postprocess_latency)
                fell_back = "1" if any(b.fallback_warnings for b in loaded.backends) else "0"
                for provider in loaded.providers:
                    providers.add_metric([*labels, provider, fell_back], 1)
        yield from generation_metrics(
            (handle.name, str(version), loaded.generator.scheduler)
            for handle in self.engine.models()
            for version, loaded in sorted(handle.versions.items())
            if loaded.generator is not None
        )
        yield from (
            success, failure, inferences, executions, pending, request, queue, compute, batch,
            preprocess, postprocess, providers, cache_hits, cache_misses, *adaptive.values(),
        )  # fmt: skip


def metrics_renderer(engine: Engine) -> Callable[[], bytes]:
    """A function that renders the Prometheus text exposition for ``engine``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    registry.register(MonitoringCollector(engine.monitoring))

    def render() -> bytes:
        return generate_latest(registry)

    return render
