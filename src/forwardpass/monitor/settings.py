"""A model's ``monitoring`` declaration: what is logged and what the fairness monitor watches.

Declared as the ``monitoring`` parameter of config.pbtxt (its value JSON text)::

    parameters { key: "monitoring" value { string_value: "{\\"payload_sample\\": 0.05}" } }

or, in config.yaml, as a ``monitoring:`` mapping (kept as the same JSON parameter). Keys:

- ``enable`` (bool, default true): log and monitor this model when the server has a request
  log or the model declares ``fairness``.
- ``payload_sample`` (0..1): the fraction of requests whose full inputs and outputs are logged;
  default the server's ``--monitor-payload-sample``.
- ``fairness``: ``sensitive`` (input column names) and/or ``sensitive_parameters`` (request
  parameter names; values strings or numbers), ``prediction_output``
  (the output holding the decision), ``positive_label`` (the value, string or number, that is
  the favourable outcome; truths are compared with it), optional ``threshold`` (a score output:
  the prediction is positive when score >= threshold), ``min_group_size`` (30), ``window``
  (the last N labelled predictions, 1000), ``bootstrap`` (resamples for the intervals, 200; 0
  turns them off), ``confidence`` (0.95), ``seed`` (0), ``label_ttl_s`` (how long a prediction
  waits for its truth, 7 days), ``max_pending`` (predictions waiting at most, 100000).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forwardpass.errors import InvalidModelConfig

__all__ = ["FairnessSettings", "MonitoringSettings", "read_monitoring"]


@dataclass(frozen=True, slots=True)
class FairnessSettings:
    #: Client input columns holding sensitive attributes.
    sensitive: tuple[str, ...]
    prediction_output: str
    positive_label: str | float
    threshold: float | None = None
    min_group_size: int = 30
    window: int = 1000
    bootstrap: int = 200
    confidence: float = 0.95
    seed: int = 0
    label_ttl_s: float = 7 * 24 * 3600.0
    max_pending: int = 100_000
    #: Request parameters holding sensitive attributes (one value for all rows of a request).
    sensitive_parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    enable: bool = True
    #: None: the server's default.
    payload_sample: float | None = None
    fairness: FairnessSettings | None = None


def _error(what: str) -> InvalidModelConfig:
    return InvalidModelConfig(f"monitoring: {what}")


def _number(d: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _error(f"{key!r} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _integer(d: Mapping[str, Any], key: str, default: int, lo: int) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _error(f"{key!r} must be an integer >= {lo}, got {value!r}")
    return value


_FAIRNESS_KEYS = frozenset(FairnessSettings.__slots__)


def _fairness(d: Any) -> FairnessSettings:
    if not isinstance(d, Mapping):
        raise _error("'fairness' must be a mapping")
    unknown = sorted(set(d) - _FAIRNESS_KEYS)
    if unknown:
        raise _error(f"unknown fairness key(s) {unknown}")
    names: dict[str, list[str]] = {}
    for key in ("sensitive", "sensitive_parameters"):
        value = d.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise _error(f"fairness {key!r} must be a list of names")
        names[key] = value
    if not names["sensitive"] and not names["sensitive_parameters"]:
        raise _error(
            "fairness needs 'sensitive' (input columns) or 'sensitive_parameters' "
            "(request parameters) naming the sensitive attributes"
        )
    output = d.get("prediction_output")
    if not isinstance(output, str) or not output:
        raise _error("fairness 'prediction_output' must name an output")
    if "positive_label" not in d:
        raise _error("fairness needs 'positive_label' (the favourable outcome)")
    label = d["positive_label"]
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        raise _error(f"fairness 'positive_label' must be a string or a number, got {label!r}")
    threshold = d.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise _error(f"fairness 'threshold' must be a number, got {threshold!r}")
        threshold = float(threshold)
        if isinstance(label, str):
            raise _error("fairness 'threshold' compares scores: 'positive_label' must be a number")
    return FairnessSettings(
        sensitive=tuple(names["sensitive"]),
        sensitive_parameters=tuple(names["sensitive_parameters"]),
        prediction_output=output,
        positive_label=label if isinstance(label, str) else float(label),
        threshold=threshold,
        min_group_size=_integer(d, "min_group_size", 30, 1),
        window=_integer(d, "window", 1000, 1),
        bootstrap=_integer(d, "bootstrap", 200, 0),
        confidence=_number(d, "confidence", 0.95, 0.5, 0.999),
        seed=_integer(d, "seed", 0, 0),
        label_ttl_s=_number(d, "label_ttl_s", 7 * 24 * 3600.0, 1.0, 1e9),
        max_pending=_integer(d, "max_pending", 100_000, 1),
    )


def read_monitoring(parameters: Mapping[str, str]) -> MonitoringSettings | None:
    """The ``monitoring`` parameter of a model config, or ``None`` when it declares none."""
    text = parameters.get("monitoring")
    if text is None:
        return None
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise _error(f"the parameter is not valid JSON: {exc}") from None
    if not isinstance(d, Mapping):
        raise _error("must be a JSON object")
    # "drift" is the drift monitor's (monitor/drift_settings.py checks it).
    unknown = sorted(set(d) - {"enable", "payload_sample", "fairness", "drift"})
    if unknown:
        raise _error(f"unknown key(s) {unknown}")
    enable = d.get("enable", True)
    if not isinstance(enable, bool):
        raise _error(f"'enable' must be true or false, got {enable!r}")
    sample = None
    if "payload_sample" in d:
        sample = _number(d, "payload_sample", 0.0, 0.0, 1.0)
    fairness = _fairness(d["fairness"]) if "fairness" in d else None
    return MonitoringSettings(enable=enable, payload_sample=sample, fairness=fairness)
