"""A :class:`ModelConfig` as the JSON Triton's ``GET v2/models/M/config`` returns.

Field names are protobuf's (``max_batch_size``, ``data_type``), enums are names
(``TYPE_FP32``, ``KIND_CPU``) and integers are numbers, as Triton writes them (it turns the
strings protobuf JSON uses for 64-bit integers back into numbers). Fields Triton always prints
(``format``, ``is_shape_tensor``, ``batch_input`` ...) are printed with their defaults, so a
client that reads them finds them; :func:`~forwardpass.repository.config_io.config_from_dict`
reads the result back unchanged.
"""

from __future__ import annotations

from typing import Any

from forwardpass.model_config import (
    DynamicBatching,
    ExecutionAccelerator,
    ModelConfig,
    ModelWarmup,
    QueuePolicy,
    TensorSpec,
    VersionPolicy,
)
from forwardpass.repository.sequence_io import response_cache_to_dict, sequence_to_dict

__all__ = ["config_to_dict"]


def _input(spec: TensorSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "data_type": spec.datatype.config_name,
        "format": "FORMAT_NONE",
        "dims": list(spec.dims),
        "is_shape_tensor": False,
        "allow_ragged_batch": spec.allow_ragged_batch,
        "optional": spec.optional,
        "is_non_linear_format_io": False,
    }
    if spec.reshape is not None:
        out["reshape"] = {"shape": list(spec.reshape)}
    return out


def _output(spec: TensorSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "data_type": spec.datatype.config_name,
        "dims": list(spec.dims),
        "label_filename": spec.label_filename,
        "is_shape_tensor": False,
        "is_non_linear_format_io": False,
    }
    if spec.reshape is not None:
        out["reshape"] = {"shape": list(spec.reshape)}
    return out


def _queue_policy(policy: QueuePolicy) -> dict[str, Any]:
    return {
        "timeout_action": policy.timeout_action,
        "default_timeout_microseconds": policy.default_timeout_microseconds,
        "allow_timeout_override": policy.allow_timeout_override,
        "max_queue_size": policy.max_queue_size,
    }


def _dynamic_batching(batching: DynamicBatching) -> dict[str, Any]:
    return {
        "preferred_batch_size": list(batching.preferred_batch_size),
        "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        "preserve_ordering": batching.preserve_ordering,
        "priority_levels": batching.priority_levels,
        "default_priority_level": batching.default_priority_level,
        "default_queue_policy": _queue_policy(batching.default_queue_policy),
        "priority_queue_policy": {
            str(level): _queue_policy(policy)
            for level, policy in sorted(batching.priority_queue_policy.items())
        },
    }


def _version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.kind == "all":
        return {"all": {}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"latest": {"num_versions": policy.num_versions}}


def _accelerator(accelerator: ExecutionAccelerator) -> dict[str, Any]:
    return {"name": accelerator.name, "parameters": dict(accelerator.parameters)}


def _optimization(config: ModelConfig) -> dict[str, Any]:
    optimization = config.optimization
    out: dict[str, Any] = {}
    if optimization.graph_level:
        out["graph"] = {"level": optimization.graph_level}
    out["priority"] = "PRIORITY_DEFAULT"
    if optimization.gpu_execution_accelerator or optimization.cpu_execution_accelerator:
        out["execution_accelerators"] = {
            "gpu_execution_accelerator": [
                _accelerator(a) for a in optimization.gpu_execution_accelerator
            ],
            "cpu_execution_accelerator": [
                _accelerator(a) for a in optimization.cpu_execution_accelerator
            ],
        }
    out["input_pinned_memory"] = {"enable": True}
    out["output_pinned_memory"] = {"enable": True}
    out["gather_kernel_buffer_threshold"] = 0
    out["eager_batching"] = False
    return out


def _warmup(sample: ModelWarmup) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for name, data in sample.inputs.items():
        entry: dict[str, Any] = {"data_type": data.data_type.config_name, "dims": list(data.dims)}
        if data.source == "input_data_file":
            entry["input_data_file"] = data.input_data_file
        else:
            entry[data.source] = True
        inputs[name] = entry
    return {
        "name": sample.name,
        "batch_size": sample.batch_size,
        "inputs": inputs,
        "count": sample.count,
    }


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """The JSON-ready dict Triton returns for ``GET v2/models/<name>/config``."""
    out: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "runtime": "",
        "version_policy": _version_policy(config.version_policy),
        "max_batch_size": config.max_batch_size,
        "input": [_input(s) for s in config.inputs],
        "output": [_output(s) for s in config.outputs],
        "batch_input": [
            {
                "kind": b.kind,
                "target_name": list(b.target_name),
                "data_type": b.data_type.config_name,
                "source_input": list(b.source_input),
            }
            for b in config.batch_input
        ],
        "batch_output": [
            {
                "target_name": list(b.target_name),
                "kind": b.kind,
                "source_input": list(b.source_input),
            }
            for b in config.batch_output
        ],
        "optimization": _optimization(config),
    }
    if config.dynamic_batching is not None:
        out["dynamic_batching"] = _dynamic_batching(config.dynamic_batching)
    if config.sequence_batching is not None:
        out["sequence_batching"] = sequence_to_dict(config.sequence_batching)
    out["response_cache"] = response_cache_to_dict(config.response_cache)
    if config.is_ensemble:
        # Triton leaves the backend empty for an ensemble.
        out["backend"] = ""
        out["ensemble_scheduling"] = {
            "step": [
                {
                    "model_name": step.model_name,
                    "model_version": step.model_version,
                    "input_map": dict(step.input_map),
                    "output_map": dict(step.output_map),
                    "model_namespace": "",
                }
                for step in config.ensemble
            ]
        }
    out["instance_group"] = [
        {
            "name": group.name or f"{config.name}_{i}",
            "kind": group.kind,
            "count": group.count,
            "gpus": list(group.gpus),
            "secondary_devices": [],
            "profile": [],
            "passive": False,
            "host_policy": "",
        }
        for i, group in enumerate(config.instance_group)
    ]
    out["default_model_filename"] = config.default_model_filename
    out["cc_model_filenames"] = {}
    out["metric_tags"] = {}
    out["parameters"] = {k: {"string_value": v} for k, v in config.parameters.items()}
    out["model_warmup"] = [_warmup(w) for w in config.model_warmup]
    out["model_transaction_policy"] = {"decoupled": config.decoupled}
    return out
