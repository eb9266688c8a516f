"""Prometheus families of the monitors, read at scrape time (nothing runs per request).

- ``forwardpass_monitor_dropped_total{model,reason}``: records the monitor queue dropped.
- the drift families (:mod:`forwardpass.monitor.drift_metrics`).
- ``forwardpass_monitor_disabled{model,sink}``: 1 for a monitor disabled for a model.
- ``forwardpass_fairness_metric{model,version,metric,group}``: per group ``count``,
  ``selection_rate``, ``accuracy``, ``tpr``, ``fpr``, ``precision`` over the labelled window,
  and the between-group numbers with ``group="between_groups"``. Groups under the minimum size
  report only their ``count``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from forwardpass.monitor.drift_metrics import drift_families

if TYPE_CHECKING:
    from forwardpass.monitor.monitoring import Monitoring

__all__ = ["MonitoringCollector"]


class MonitoringCollector:
    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring

    def collect(self) -> Iterator[Metric]:
        m = self.monitoring
        dropped = CounterMetricFamily(
            "forwardpass_monitor_dropped",
            "Request records the monitor queue dropped",
            labels=["model", "reason"],
        )
        for (model, reason), n in sorted(m.dropped().items()):
            dropped.add_metric([model, reason], n)
        disabled = GaugeMetricFamily(
            "forwardpass_monitor_disabled",
            "Monitors disabled for a model after raising (1)",
            labels=["model", "sink"],
        )
        for sink, model in sorted(dict(m.hub.disabled)):  # a copy: the hub thread may add
            disabled.add_metric([model, sink], 1)
        fairness = GaugeMetricFamily(
            "forwardpass_fairness_metric",
            "Group fairness over the window of labelled predictions",
            labels=["model", "version", "metric", "group"],
        )
        for model in sorted(m.fairness.settings):
            for version, report in m.fairness.report(model, intervals=False).items():
                for g in report["groups"]:
                    fairness.add_metric([model, version, "count", g["group"]], g["count"])
                    for metric, value in g.get("metrics", {}).items():
                        if value is not None:
                            fairness.add_metric([model, version, metric, g["group"]], value)
                for metric, d in (report["disparities"] or {}).items():
                    if d["value"] is not None:
                        fairness.add_metric([model, version, metric, "between_groups"], d["value"])
        yield from (dropped, disabled, fairness)
        yield from drift_families(m.drift)
