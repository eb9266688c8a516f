"""Ray Serve deployment options from a model config (forwardpass.ray.options; no ray needed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import InstanceGroup, ModelConfig
from forwardpass.ray.application import RayOptions
from forwardpass.ray.options import MIN_ONGOING, deployment_options

BASE = ModelConfig(name="m", max_batch_size=256, instance_group=(InstanceGroup(3, "KIND_CPU"),))


def _with(**parameters: str) -> ModelConfig:
    return replace(BASE, parameters=parameters)


def test_instance_group_count_is_replicas_with_room_for_two_batches() -> None:
    options = deployment_options(BASE, replica_cpus=0.5)
    kwargs = options.as_kwargs()
    assert kwargs["num_replicas"] == 3
    assert kwargs["max_ongoing_requests"] == 512 >= BASE.max_batch_size
    assert kwargs["ray_actor_options"] == {"num_cpus": 0.5}
    assert options.kind == "KIND_CPU"
    small = deployment_options(replace(BASE, max_batch_size=4))
    assert small.max_ongoing_requests == MIN_ONGOING


def test_gpu_kind_asks_for_a_gpu_per_replica() -> None:
    config = replace(BASE, instance_group=(InstanceGroup(2, "KIND_GPU"),))
    options = deployment_options(config)
    assert options.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 1}
    assert options.kind == "KIND_GPU" and options.num_replicas == 2


def test_ray_parameters_win() -> None:
    options = deployment_options(
        _with(
            num_replicas="5",
            ray_actor_options='{"num_cpus": 2, "num_gpus": 0.5}',
            max_ongoing_requests="300",
        )
    )
    assert options.num_replicas == 5
    assert options.ray_actor_options == {"num_cpus": 2, "num_gpus": 0.5}
    assert options.max_ongoing_requests == 300
    scaled = deployment_options(_with(autoscaling_config='{"min_replicas": 1, "max_replicas": 4}'))
    kwargs = scaled.as_kwargs()
    assert "num_replicas" not in kwargs
    assert kwargs["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"num_replicas": "two"}, "num_replicas must be an integer, got 'two'"),
        ({"num_replicas": "0"}, "num_replicas must be >= 1, got 0"),
        ({"ray_actor_options": "{num_cpus: 1}"}, "ray_actor_options is not valid JSON"),
        ({"ray_actor_options": "[1]"}, "ray_actor_options must be a JSON object"),
        (
            {"num_replicas": "2", "autoscaling_config": "{}"},
            "either num_replicas or autoscaling_config",
        ),
        ({"max_ongoing_requests": "8"}, "below max_batch_size (256)"),
    ],
)
def test_bad_ray_parameters_are_precise(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidModelConfig) as caught:
        deployment_options(_with(**parameters))
    assert message in caught.value.message and "'m'" in caught.value.message


def test_mixed_instance_kinds_are_refused() -> None:
    config = replace(
        BASE, instance_group=(InstanceGroup(1, "KIND_CPU"), InstanceGroup(1, "KIND_GPU"))
    )
    with pytest.raises(InvalidModelConfig, match="share one kind"):
        deployment_options(config)


def test_serve_run_arguments() -> None:
    options = RayOptions.from_args({"repository": "/models", "replica_cpus": "0.25"})
    assert options == RayOptions(Path("/models"), replica_cpus=0.25)
    with pytest.raises(InvalidArgument, match="needs repository=PATH"):
        RayOptions.from_args({})
    with pytest.raises(
        InvalidArgument, match=r"unknown forwardpass.ray:app argument\(s\) \['cpus'\]"
    ):
        RayOptions.from_args({"repository": "/m", "cpus": "1"})
    with pytest.raises(InvalidArgument, match="ingress_replicas must be an integer, got 'x'"):
        RayOptions.from_args({"repository": "/m", "ingress_replicas": "x"})
    with pytest.raises(InvalidArgument, match="replica_cpus must be a number, got 'lots'"):
        RayOptions.from_args({"repository": "/m", "replica_cpus": "lots"})
