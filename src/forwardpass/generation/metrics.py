"""Per-token counters of one generation model version, read by ``monitor.metrics`` at scrape.

Recorded on the scheduler's worker thread with a few additions per token (nothing here
calls Prometheus); the collector below renders them with the live gauges of the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from forwardpass.monitor.stats import Histogram

__all__ = ["GenerationStats", "generation_metrics"]

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(slots=True)
class GenerationStats:
    """Token counters and latency histograms of one scheduler."""

    time_to_first_token: Histogram = field(default_factory=lambda: Histogram(_SECONDS))
    inter_token: Histogram = field(default_factory=lambda: Histogram(_SECONDS))
    prefill_seconds: Histogram = field(default_factory=lambda: Histogram(_SECONDS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(_ROWS))
    generated_tokens: int = 0
    prompt_tokens: int = 0
    rejected: int = 0
    cancelled: int = 0


def generation_metrics(models: Iterable[tuple[str, str, Any]]) -> Iterator[Any]:
    """The forwardpass_generation_* families for ``(model, version, scheduler)`` triples."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    labels = ["model", "version"]

    def hist(name: str, doc: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(name, doc, labels=labels)

    ttft = hist("forwardpass_generation_time_to_first_token_seconds", "Queue + prefill time")
    itl = hist("forwardpass_generation_inter_token_seconds", "Time between a sequence's tokens")
    prefill = hist("forwardpass_generation_prefill_seconds", "One prompt's prefill step")
    batch = hist("forwardpass_generation_batch_size", "Sequences per decode step")
    tokens = CounterMetricFamily("forwardpass_generation_tokens", "Tokens generated", labels=labels)
    prompt = CounterMetricFamily(
        "forwardpass_generation_prompt_tokens", "Prompt tokens prefilled", labels=labels
    )
    rejected = CounterMetricFamily(
        "forwardpass_generation_rejected",
        "Requests refused with 503 (no cache slot within the bounds)",
        labels=labels,
    )
    cancelled = CounterMetricFamily(
        "forwardpass_generation_cancelled", "Sequences cancelled by their client", labels=labels
    )
    running = GaugeMetricFamily(
        "forwardpass_generation_running_sequences", "Sequences in the batch", labels=labels
    )
    waiting = GaugeMetricFamily(
        "forwardpass_generation_waiting_sequences", "Requests waiting for a slot", labels=labels
    )
    used = GaugeMetricFamily(
        "forwardpass_generation_cache_used_bytes", "KV cache bytes held by sequences", labels=labels
    )
    capacity = GaugeMetricFamily(
        "forwardpass_generation_cache_capacity_bytes", "KV cache budget in bytes", labels=labels
    )
    used_tokens = GaugeMetricFamily(
        "forwardpass_generation_cache_used_tokens", "Positions filled in the KV cache",
        labels=labels,
    )  # fmt: skip
    for model, version, scheduler in models:
        key = [model, version]
        stats: GenerationStats = scheduler.stats
        for family, h in (
            (ttft, stats.time_to_first_token),
            (itl, stats.inter_token),
            (prefill, stats.prefill_seconds),
            (batch, stats.batch_size),
        ):
            family.add_metric(key, h.buckets(), h.total)
        tokens.add_metric(key, stats.generated_tokens)
        prompt.add_metric(key, stats.prompt_tokens)
        rejected.add_metric(key, stats.rejected)
        cancelled.add_metric(key, stats.cancelled)
        running.add_metric(key, scheduler.running)
        waiting.add_metric(key, scheduler.waiting)
        used.add_metric(key, scheduler.cache.used_bytes)
        capacity.add_metric(key, scheduler.cache.capacity_bytes)
        used_tokens.add_metric(key, scheduler.cache.used_tokens)
    yield from (
        ttft, itl, prefill, batch, tokens, prompt, rejected, cancelled, running, waiting, used,
        capacity, used_tokens,
    )  # fmt: skip
