"""Ray Serve deployment options for one model, derived from its config (no ray import).

A model's ``instance_group`` count becomes its number of replicas, each replica running one
instance (``KIND_GPU`` asks Ray for one GPU per replica). The model config's ``parameters``
may set Ray's own options instead, as strings, the way every Triton parameter is written:

- ``num_replicas``: an integer ≥ 1;
- ``autoscaling_config``: a JSON object (Ray Serve's ``AutoscalingConfig``), replacing
  ``num_replicas``;
- ``ray_actor_options``: a JSON object (``num_cpus``, ``num_gpus``, ``memory``, ``resources``…);
- ``max_ongoing_requests``: an integer ≥ 1. The default lets a replica hold two full batches
  (and never fewer than 64 requests), so forwardpass's batcher inside it can fill them; Ray's
  own default (5) would cap every batch at 5.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig

__all__ = ["RAY_PARAMETERS", "DeploymentOptions", "deployment_options"]

#: The model config parameters this module reads.
RAY_PARAMETERS = ("num_replicas", "autoscaling_config", "ray_actor_options", "max_ongoing_requests")

#: The fewest requests a model replica accepts at once (see the module docstring).
MIN_ONGOING = 64


@dataclass(frozen=True, slots=True)
class DeploymentOptions:
    """What ``serve.deployment(...).options(...)`` gets for one model."""

    name: str
    #: ``None`` when ``autoscaling_config`` sets the count.
    num_replicas: int | None
    max_ongoing_requests: int
    ray_actor_options: Mapping[str, Any] = field(default_factory=dict)
    autoscaling_config: Mapping[str, Any] | None = None
    #: The instance kind of the one instance each replica's engine runs.
    kind: str = "KIND_AUTO"

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "name": self.name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": dict(self.ray_actor_options),
        }
        if self.autoscaling_config is not None:
            kwargs["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            kwargs["num_replicas"] = self.num_replicas
        return kwargs


def _positive_int(parameters: Mapping[str, str], key: str, model: str) -> int | None:
    raw = parameters.get(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidModelConfig(
            f"model {model!r}: parameter {key} must be an integer, got {raw!r}"
        ) from None
    if value < 1:
        raise InvalidModelConfig(f"model {model!r}: parameter {key} must be >= 1, got {value}")
    return value


def _json_object(parameters: Mapping[str, str], key: str, model: str) -> dict[str, Any] | None:
    raw = parameters.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidModelConfig(
            f"model {model!r}: parameter {key} is not valid JSON ({exc.msg})"
        ) from None
    if not isinstance(value, dict):
        raise InvalidModelConfig(f"model {model!r}: parameter {key} must be a JSON object")
    return value


def deployment_options(config: ModelConfig, replica_cpus: float = 1.0) -> DeploymentOptions:
    """The deployment options of the model ``config`` describes.

    ``replica_cpus`` is what a replica reserves when neither the config's
    ``ray_actor_options`` nor a GPU kind says otherwise.
    """
    name = config.name
    parameters = config.parameters
    kinds = {g.kind for g in config.instance_group}
    gpu = "KIND_GPU" in kinds
    if len(kinds) > 1:
        raise InvalidModelConfig(
            f"model {name!r}: on Ray every replica is alike, so the instance groups must share "
            f"one kind (got {sorted(kinds)}); set num_replicas and ray_actor_options instead"
        )
    replicas = _positive_int(parameters, "num_replicas", name)
    autoscaling = _json_object(parameters, "autoscaling_config", name)
    if autoscaling is not None and replicas is not None:
        raise InvalidModelConfig(
            f"model {name!r}: set either num_replicas or autoscaling_config, not both"
        )
    if autoscaling is None and replicas is None:
        replicas = 1 if config.is_ensemble else config.instance_count
    actor = _json_object(parameters, "ray_actor_options", name)
    if actor is None:
        actor = {"num_cpus": replica_cpus}
        if gpu:
            actor["num_gpus"] = 1
    ongoing = _positive_int(parameters, "max_ongoing_requests", name)
    if ongoing is None:
        ongoing = max(MIN_ONGOING, 2 * config.max_batch_size)
    elif ongoing < config.max_batch_size:
        raise InvalidModelConfig(
            f"model {name!r}: max_ongoing_requests ({ongoing}) is below max_batch_size "
            f"({config.max_batch_size}), so no batch could ever fill"
        )
    return DeploymentOptions(
        name=name,
        num_replicas=replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options=actor,
        autoscaling_config=autoscaling,
        kind=next(iter(kinds)),
    )
