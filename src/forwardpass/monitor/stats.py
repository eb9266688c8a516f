"""Per model-version counters: the source of Triton's statistics API and of /metrics.

Recording is plain integer arithmetic on the event-loop thread (no locks, no Prometheus calls
on the hot path); readers (the statistics endpoint, the Prometheus collector) take a snapshot.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from forwardpass.results import BatchStatistics, Duration, InferenceStatistics, ModelStatistics
from forwardpass.scheduling.batcher import BatchRecord

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS_S", "Histogram", "ModelStats"]

#: Seconds; spans 50 µs .. 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(slots=True)
class Histogram:
    """Cumulative-at-read histogram: per-bucket counts, sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        """Prometheus ``le`` buckets, cumulative, ending with +Inf."""
        out = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.count))
        return out


class ModelStats:
    """Counters for one model version."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_count = 0
        self.queue_ns = 0
        self.input_ns = 0
        self.infer_ns = 0
        self.output_ns = 0
        self.compute_count = 0
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.fail_reasons: dict[str, int] = {}
        #: Response cache lookups that answered / that ran the model (Triton's cache_hit and
        #: cache_miss: a miss's time is its lookup plus its insertion).
        self.cache_hit_count = 0
        self.cache_hit_ns = 0
        self.cache_miss_count = 0
        self.cache_miss_ns = 0
        #: batch size → [executions, input ns, infer ns, output ns]
        self.batches: dict[int, list[int]] = {}
        self.request_latency = Histogram(LATENCY_BUCKETS_S)
        self.queue_latency = Histogram(LATENCY_BUCKETS_S)
        self.compute_latency = Histogram(LATENCY_BUCKETS_S)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.preprocess_latency = Histogram(LATENCY_BUCKETS_S)
        self.postprocess_latency = Histogram(LATENCY_BUCKETS_S)

    def on_batch(self, record: BatchRecord) -> None:
        """Listener for the batcher: one call per executed batch."""
        self.execution_count += 1
        if not record.retry:  # a re-run's requests had their queue time counted already
            queue_hist = self.queue_latency
            for q in record.queue_ns:
                queue_hist.observe(q / 1e9)
            self.queue_count += record.requests
            self.queue_ns += sum(record.queue_ns)
        self.batch_size.observe(record.batch_size)
        compute = record.input_ns + record.infer_ns + record.output_ns
        self.compute_latency.observe(compute / 1e9)
        if record.ok:
            self.inference_count += record.batch_size
            self.compute_count += record.requests
            self.input_ns += record.input_ns * record.requests
            self.infer_ns += record.infer_ns * record.requests
            self.output_ns += record.output_ns * record.requests
            entry = self.batches.get(record.batch_size)
            if entry is None:
                entry = self.batches[record.batch_size] = [0, 0, 0, 0]
            entry[0] += 1
            entry[1] += record.input_ns
            entry[2] += record.infer_ns
            entry[3] += record.output_ns
        self.last_inference_ms = int(time.time() * 1000)

    def on_request(self, ok: bool, duration_ns: int, reason: str = "") -> None:
        """One finished request, successful or not, with its time inside the server."""
        if ok:
            self.success_count += 1
            self.success_ns += duration_ns
        else:
            self.fail_count += 1
            self.fail_ns += duration_ns
            self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1
        self.request_latency.observe(duration_ns / 1e9)

    def on_cache(self, hit: bool, duration_ns: int) -> None:
        """One response-cache lookup (with its insertion, for a miss)."""
        if hit:
            self.cache_hit_count += 1
            self.cache_hit_ns += duration_ns
        else:
            self.cache_miss_count += 1
            self.cache_miss_ns += duration_ns

    def on_processing(self, pre_ns: int, post_ns: int) -> None:
        """Time one request spent in declared pre- and post-processing (0 = none ran)."""
        if pre_ns:
            self.preprocess_latency.observe(pre_ns / 1e9)
        if post_ns:
            self.postprocess_latency.observe(post_ns / 1e9)

    def snapshot(self) -> ModelStatistics:
        """Triton's statistics for this version, as of now."""
        compute = self.compute_count
        return ModelStatistics(
            name=self.name,
            version=self.version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            inference_stats=InferenceStatistics(
                success=Duration(self.success_count, self.success_ns),
                fail=Duration(self.fail_count, self.fail_ns),
                queue=Duration(self.queue_count, self.queue_ns),
                compute_input=Duration(compute, self.input_ns),
                compute_infer=Duration(compute, self.infer_ns),
                compute_output=Duration(compute, self.output_ns),
                cache_hit=Duration(self.cache_hit_count, self.cache_hit_ns),
                cache_miss=Duration(self.cache_miss_count, self.cache_miss_ns),
            ),
            batch_stats=tuple(
                BatchStatistics(size, Duration(n, i), Duration(n, c), Duration(n, o))
                for size, (n, i, c, o) in sorted(self.batches.items())
            ),
        )
