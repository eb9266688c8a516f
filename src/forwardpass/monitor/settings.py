"""A model's ``monitoring`` declaration: what is logged, and what the drift and fairness
monitors watch. This module is the one parser of the section.

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
- ``drift`` (a mapping, or ``true`` for the defaults)::

      drift:
        window: 200             # rows per window
        step: 50                # rows between evaluations (default window / 4; = window: tumbling)
        false_alarm_rate: 0.01  # share of windows of undrifted traffic allowed to alarm
        correction: bonferroni  # or fdr (Benjamini–Hochberg), over the tests of a window
        numeric_test: ks        # or cvm (Cramér–von Mises)
        features: [...]         # optional subset of the model's features
        categorical: [...]      # numeric-looking features to test as categories
        embedding: auto         # an output name, auto (penultimate for ONNX image/text) or none
        permutations: 0         # MMD permutations; 0: enough for the per-test level
        history: 200            # evaluations kept for /monitor

A broken ``drift`` or ``fairness`` sub-section turns off that monitor only (its message is in
:attr:`MonitoringSettings.errors`); a broken section as a whole (not JSON, unknown keys) raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from forwardpass.errors import ForwardpassError, InvalidModelConfig

__all__ = [
    "MONITORING_PARAMETER",
    "DriftSettings",
    "FairnessSettings",
    "MonitoringSettings",
    "drift_settings",
    "read_monitoring",
]

#: The config parameter (and config.yaml key) of the monitoring section.
MONITORING_PARAMETER = "monitoring"


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
class DriftSettings:
    """How one model's traffic is compared with its reference profile."""

    window: int = 200
    #: Rows between evaluations; 0 (unset) is a quarter of the window.
    step: int = 0
    false_alarm_rate: float = 0.01
    correction: str = "bonferroni"
    numeric_test: str = "ks"
    features: tuple[str, ...] | None = None
    categorical: tuple[str, ...] = ()
    embedding: str = "auto"
    permutations: int = 0
    history: int = 200

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> InvalidModelConfig:
            return InvalidModelConfig(f"monitoring.drift.{key}: {why}")

        if self.window < 10:
            raise bad("window", f"must be at least 10 rows, got {self.window}")
        if self.step == 0:
            object.__setattr__(self, "step", max(1, self.window // 4))
        if not 1 <= self.step <= self.window:
            raise bad("step", f"must be between 1 and window ({self.window}), got {self.step}")
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise bad("false_alarm_rate", f"must be in (0, 1), got {self.false_alarm_rate}")
        if self.correction not in ("bonferroni", "fdr"):
            raise bad("correction", f"must be bonferroni or fdr, got {self.correction!r}")
        if self.numeric_test not in ("ks", "cvm"):
            raise bad("numeric_test", f"must be ks or cvm, got {self.numeric_test!r}")
        if self.permutations < 0:
            raise bad("permutations", "must be 0 (derived) or a positive count")
        if self.history < 1:
            raise bad("history", "must be at least 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DriftSettings:
        if not isinstance(data, Mapping):
            raise InvalidModelConfig("monitoring.drift must be a mapping")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidModelConfig(
                f"monitoring.drift: unknown key(s) {unknown}; known: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            default = known[key].default
            if key in ("features", "categorical"):
                if value is None and key == "features":
                    values[key] = None
                    continue
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise InvalidModelConfig(f"monitoring.drift.{key} must be a list of names")
                values[key] = tuple(value)
            elif isinstance(default, bool) or isinstance(value, bool):
                raise InvalidModelConfig(f"monitoring.drift.{key}: got a boolean")
            elif isinstance(default, int) and not isinstance(default, bool):
                if not isinstance(value, int):
                    raise InvalidModelConfig(f"monitoring.drift.{key} must be an integer")
                values[key] = value
            elif isinstance(default, float):
                if not isinstance(value, int | float):
                    raise InvalidModelConfig(f"monitoring.drift.{key} must be a number")
                values[key] = float(value)
            else:
                if not isinstance(value, str):
                    raise InvalidModelConfig(f"monitoring.drift.{key} must be a string")
                values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("features", "categorical"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    enable: bool = True
    #: None: the server's default.
    payload_sample: float | None = None
    fairness: FairnessSettings | None = None
    drift: DriftSettings | None = None
    #: Sub-section → why it is off (it is declared but broken).
    errors: Mapping[str, str] = field(default_factory=dict)

    def declares(self, section: str) -> bool:
        """Whether the section is declared (valid or not)."""
        return getattr(self, section) is not None or section in self.errors


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
    text = parameters.get(MONITORING_PARAMETER)
    if text is None:
        return None
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise _error(f"the parameter is not valid JSON: {exc}") from None
    if not isinstance(d, Mapping):
        raise _error("must be a JSON object")
    unknown = sorted(set(d) - {"enable", "payload_sample", "fairness", "drift"})
    if unknown:
        raise _error(f"unknown key(s) {unknown}")
    enable = d.get("enable", True)
    if not isinstance(enable, bool):
        raise _error(f"'enable' must be true or false, got {enable!r}")
    sample = None
    if "payload_sample" in d:
        sample = _number(d, "payload_sample", 0.0, 0.0, 1.0)
    errors: dict[str, str] = {}
    fairness: FairnessSettings | None = None
    drift: DriftSettings | None = None
    try:
        fairness = _fairness(d["fairness"]) if "fairness" in d else None
    except ForwardpassError as exc:
        errors["fairness"] = exc.message
    try:
        if "drift" in d:
            section = d["drift"]
            drift = DriftSettings() if section is True or section == {} else (
                DriftSettings.from_mapping(section)
            )  # fmt: skip
    except ForwardpassError as exc:
        errors["drift"] = exc.message
    return MonitoringSettings(
        enable=enable, payload_sample=sample, fairness=fairness, drift=drift, errors=errors
    )


def drift_settings(parameters: Mapping[str, str]) -> DriftSettings | None:
    """The model's drift settings, or None when it declares none; raises when they are broken
    (``forwardpass monitor reference`` stops on what the server would only report)."""
    settings = read_monitoring(parameters)
    if settings is None:
        return None
    if "drift" in settings.errors:
        raise InvalidModelConfig(settings.errors["drift"])
    return settings.drift
