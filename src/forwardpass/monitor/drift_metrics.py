"""Prometheus families of the drift monitors, read at scrape time.

``forwardpass_drift_score{model,version,feature,test}``: the last window's statistic of each
test (``ks``/``cvm``/``chi2``/``mmd``) and its effect sizes (``psi``, ``wasserstein``);
``forwardpass_drift_p_value`` beside it; ``forwardpass_drift_alarm{model,version}``: 1 when
the last window alarmed. Records the monitor hub's full queue dropped are counted once, for
every monitor, in ``forwardpass_monitor_dropped_total``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwardpass.monitor.drift_sink import DriftSink

from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = ["drift_families"]


def drift_families(sink: DriftSink) -> Iterator[Metric]:
    score = GaugeMetricFamily(
        "forwardpass_drift_score",
        "Drift statistic or effect size of the last window, per feature and test",
        labels=["model", "version", "feature", "test"],
    )
    p_value = GaugeMetricFamily(
        "forwardpass_drift_p_value",
        "p-value of the last window's drift test, per feature (before correction)",
        labels=["model", "version", "feature", "test"],
    )
    alarm = GaugeMetricFamily(
        "forwardpass_drift_alarm",
        "1 when the last evaluated window drifted from the reference profile",
        labels=["model", "version"],
    )
    for name, version, monitor in sink.monitors():
        labels = [name, str(version)]
        alarm.add_metric(labels, 1.0 if monitor.alarm else 0.0)
        for feature, test, value in monitor.scores():
            if math.isfinite(value):
                score.add_metric([*labels, feature, test], value)
        last = monitor.detector.last
        if last is not None:
            for f in last.features:
                if math.isfinite(f.p_value):
                    p_value.add_metric([*labels, f.feature, f.test], f.p_value)
    yield from (score, p_value, alarm)
