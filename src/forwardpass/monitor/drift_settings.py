"""A model's drift settings: the ``drift`` key of its ``monitoring`` section.

The section is declared like ``processing``: in config.pbtxt as the JSON text of a parameter,
``parameters { key: "monitoring" value: { string_value: "{\\"drift\\": {...}}" } }``, or in
config.yaml as a plain ``monitoring:`` mapping (kept as that same JSON parameter). Other keys
of the section (request log, fairness) belong to other monitors and are left alone here::

    monitoring:
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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig

__all__ = ["MONITORING_PARAMETER", "DriftSettings", "drift_settings", "monitoring_section"]

#: The config parameter (and config.yaml key) of the monitoring section.
MONITORING_PARAMETER = "monitoring"


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


def monitoring_section(config: ModelConfig) -> dict[str, Any] | None:
    """The parsed ``monitoring`` parameter, or None when the model declares none."""
    text = config.parameters.get(MONITORING_PARAMETER)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            import yaml

            value = yaml.safe_load(text)
        except Exception as exc:
            raise InvalidModelConfig(
                f"parameter monitoring is neither JSON nor YAML: {exc}"
            ) from None
    if not isinstance(value, dict):
        raise InvalidModelConfig("parameter monitoring must be a mapping")
    return value


def drift_settings(config: ModelConfig) -> DriftSettings | None:
    """The model's drift settings, or None when its monitoring section has no ``drift``."""
    section = monitoring_section(config)
    if section is None or "drift" not in section:
        return None
    drift = section["drift"]
    if drift is True or drift == {}:
        return DriftSettings()
    return DriftSettings.from_mapping(drift)
