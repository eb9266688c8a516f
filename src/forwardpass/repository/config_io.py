"""Model configuration from plain dicts: ``config.pbtxt``, ``config.yaml``, Triton JSON.

All three sources become the same dict shape: :func:`~forwardpass.repository.pbtxt.parse_pbtxt`
output, ``yaml.safe_load`` output, or the JSON that Triton's ``GET v2/models/M/config`` returns
(and that a repository load request carries in ``parameters.config``). This module holds the
schema: which fields are repeated, which are maps, which enums exist. It accepts each source's
spelling of the same thing:

* a repeated field written once (``dims: 4``) or as a list (``dims: [4]``);
* a map as protobuf text writes it (entries ``{ key: ... value: ... }``), as Triton JSON writes
  it (``{"k": {"string_value": "v"}}``) or, in YAML, as a plain mapping (``{k: v}``). A mapping
  whose only keys are ``key`` and ``value`` is read as one map entry;
* integers as numbers or as decimal strings (protobuf JSON writes 64-bit integers as strings);
* enums as names (``TYPE_FP32``, ``KIND_GPU``) or numbers; datatypes also as protocol names.

Unknown fields are errors naming the field, as in Triton. Fields of Triton's schema that
forwardpass does not implement either fail (decoupled models, shape tensors ...) or, when
they cannot change results (``model_metrics`` ...), are ignored with a logged warning.
``sequence_batching`` and ``response_cache`` are read by :mod:`.sequence_io`.

A config may leave out what the model file can tell (inputs, their datatypes or dims,
``max_batch_size``): :func:`read_draft` keeps those gaps, which
:func:`~forwardpass.repository.completion.complete_config` fills; :func:`config_from_dict`
requires a complete config. The way back, a config as Triton's JSON, is
:func:`~forwardpass.repository.config_json.config_to_dict`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, cast

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import (
    BATCH_INPUT_KINDS,
    BatchInput,
    BatchOutput,
    DynamicBatching,
    EnsembleStep,
    ExecutionAccelerator,
    InstanceGroup,
    ModelConfig,
    ModelWarmup,
    Optimization,
    QueuePolicy,
    VersionPolicy,
    WarmupInput,
)
from forwardpass.repository import sequence_io
from forwardpass.repository.draft import ConfigDraft, TensorDraft
from forwardpass.repository.fields import (
    as_bool,
    as_datatype,
    as_enum,
    as_int,
    as_shape,
    as_str,
    as_text,
    config_error,
    join,
    map_entries,
    message_fields,
    repeated,
    single,
    string_map,
)

__all__ = ["config_from_dict", "read_draft"]

_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")
_TIMEOUT_ACTIONS = ("REJECT", "DELAY")
_FORMATS = ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW")
_PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "pytorch_libtorch": "pytorch",
}
_DEFAULT_FILENAMES = {
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
    "tensorflow": "model.savedmodel",
    "pytorch": "model.pt",
    "python": "model.py",
}

_TOP_FIELDS = (
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "input",
    "output",
    "dynamic_batching",
    "instance_group",
    "version_policy",
    "default_model_filename",
    "parameters",
    "optimization",
    "model_warmup",
    "batch_input",
    "batch_output",
    "sequence_batching",
    "response_cache",
)
#: Triton fields with no effect on results here: ignored, with a warning when set.
_TOP_IGNORED = (
    "runtime",
    "cc_model_filenames",
    "metric_tags",
    "model_operations",
    "model_repository_agents",
    "model_metrics",
)


def read_draft(d: Mapping[str, Any], *, name: str) -> ConfigDraft:
    """Read a config dict (pbtxt, YAML or Triton JSON) without requiring the model's tensors."""
    top = message_fields(
        d,
        "",
        _TOP_FIELDS
        + ("model_transaction_policy", "processing", "monitoring", "ensemble_scheduling"),
        _TOP_IGNORED,
    )
    policy = message_fields(
        single(top.get("model_transaction_policy"), "model_transaction_policy"),
        "model_transaction_policy",
        ("decoupled",),
    )
    decoupled = as_bool(policy.get("decoupled", False), "model_transaction_policy.decoupled")

    config_name = as_str(top.get("name", name), "name") or name
    if config_name != name:
        raise InvalidModelConfig(
            f"config name {config_name!r} does not match the model's folder name {name!r}"
        )
    platform = as_str(top.get("platform", ""), "platform")
    backend = as_str(top.get("backend", ""), "backend")
    if platform == "ensemble":
        if backend not in ("", "ensemble"):
            raise config_error("backend", f"an ensemble has no backend, got {backend!r}")
        backend = "ensemble"
        if "ensemble_scheduling" not in top:
            raise config_error("ensemble_scheduling", "an ensemble needs its steps")
    elif "ensemble_scheduling" in top:
        raise config_error("ensemble_scheduling", 'only a model with platform "ensemble" has steps')
    if not backend:
        if platform and platform not in _PLATFORM_BACKEND:
            raise config_error("platform", f"unknown platform {platform!r}; set backend instead")
        backend = _PLATFORM_BACKEND.get(platform, "onnxruntime")
    if backend == "onnxruntime":
        if platform not in ("", "onnxruntime_onnx"):
            raise config_error("platform", f"{platform!r} contradicts backend 'onnxruntime'")
        platform = "onnxruntime_onnx"

    fields: dict[str, Any] = {}
    if decoupled:
        if backend != "python":
            raise config_error(
                "model_transaction_policy",
                f"decoupled models need backend 'python' (this one has {backend!r})",
            )
        fields["decoupled"] = True
    filename = as_str(top.get("default_model_filename", ""), "default_model_filename")
    fields["default_model_filename"] = filename or _DEFAULT_FILENAMES.get(backend, "")
    if "dynamic_batching" in top:
        fields["dynamic_batching"] = _dynamic_batching(top["dynamic_batching"])
    if "sequence_batching" in top:
        fields["sequence_batching"] = sequence_io.sequence_batching(top["sequence_batching"])
    if "response_cache" in top:
        fields["response_cache"] = sequence_io.response_cache(top["response_cache"])
    groups = [
        _instance_group(g, f"instance_group[{i}]", name, i)
        for i, g in enumerate(repeated(top.get("instance_group")))
    ]
    fields["instance_group"] = tuple(groups) or (InstanceGroup(name=f"{name}_0"),)
    fields["version_policy"] = _version_policy(top.get("version_policy"))
    fields["parameters"] = MappingProxyType(
        {
            as_text(k, p): _parameter_value(v, p)
            for k, v, p in map_entries(top.get("parameters"), "parameters")
        }
    )
    for section in ("processing", "monitoring"):
        if section not in top:
            continue
        # The native YAML form may write these declarations as mappings; each is kept as the
        # JSON text of the parameter of its name, where config.pbtxt carries it.
        if section in fields["parameters"]:
            raise config_error(section, "declared both as a key and as a parameter")
        if not isinstance(top[section], Mapping):
            what = "with inputs and/or outputs" if section == "processing" else "of monitors"
            raise config_error(section, f"must be a mapping {what}")
        fields["parameters"] = MappingProxyType(
            {**fields["parameters"], section: json.dumps(top[section])}
        )
    if platform == "ensemble":
        fields["ensemble"] = _ensemble(top["ensemble_scheduling"])
    fields["optimization"] = _optimization(top.get("optimization"))
    fields["batch_input"] = tuple(
        _batch_input(b, f"batch_input[{i}]") for i, b in enumerate(repeated(top.get("batch_input")))
    )
    fields["batch_output"] = tuple(
        _batch_output(b, f"batch_output[{i}]")
        for i, b in enumerate(repeated(top.get("batch_output")))
    )
    fields["model_warmup"] = tuple(
        _warmup(w, f"model_warmup[{i}]", i) for i, w in enumerate(repeated(top.get("model_warmup")))
    )
    max_batch_size = (
        as_int(top["max_batch_size"], "max_batch_size", minimum=0)
        if "max_batch_size" in top
        else None
    )
    return ConfigDraft(
        name=name,
        platform=platform,
        backend=backend,
        max_batch_size=max_batch_size,
        inputs=_tensors(top.get("input"), "input"),
        outputs=_tensors(top.get("output"), "output"),
        fields=fields,
    )


def config_from_dict(d: Mapping[str, Any], *, name: str) -> ModelConfig:
    """A complete, validated :class:`ModelConfig` from a pbtxt, YAML or Triton JSON dict.

    ``name`` is the model's folder name; a ``name`` in the dict must equal it. Every declared
    tensor must carry its ``data_type`` and ``dims`` (use ``complete_config`` to take them
    from the model file instead).
    """
    return read_draft(d, name=name).build()


# -- sections ---------------------------------------------------------------------------------

_INPUT_FIELDS = ("name", "data_type", "format", "dims", "reshape", "optional", "allow_ragged_batch")
_OUTPUT_FIELDS = ("name", "data_type", "dims", "reshape", "label_filename")
_FLAG_FIELDS = ("is_shape_tensor", "is_non_linear_format_io")


def _tensors(value: Any, kind: str) -> list[TensorDraft]:
    tensors = [_tensor(t, f"{kind}[{i}]", kind) for i, t in enumerate(repeated(value))]
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise config_error(kind, f"{kind} name {tensor.name!r} is declared twice")
        seen.add(tensor.name)
    return tensors


def _tensor(value: Any, path: str, kind: str) -> TensorDraft:
    own = _INPUT_FIELDS if kind == "input" else _OUTPUT_FIELDS
    flags = _FLAG_FIELDS
    msg = message_fields(value, path, own + flags)
    if "name" not in msg or not as_str(msg["name"], join(path, "name")):
        raise config_error(path, f"every {kind} needs a name")
    name = as_str(msg["name"], join(path, "name"))
    path = f"{kind} {name!r}"
    for flag in flags:
        if as_bool(msg.get(flag, False), join(path, flag)):
            raise config_error(path, f"{flag} is not supported yet")
    if "format" in msg:
        as_enum(msg["format"], join(path, "format"), _FORMATS, "FORMAT_")
    reshape = None
    if "reshape" in msg:
        reshape_msg = message_fields(msg["reshape"], join(path, "reshape"), ("shape",))
        reshape = as_shape(reshape_msg.get("shape"), join(path, "reshape.shape"))
    return TensorDraft(
        name=name,
        datatype=as_datatype(msg["data_type"], join(path, "data_type"))
        if "data_type" in msg
        else None,
        dims=as_shape(msg["dims"], join(path, "dims")) if "dims" in msg else None,
        label_filename=as_str(msg.get("label_filename", ""), join(path, "label_filename")),
        optional=as_bool(msg.get("optional", False), join(path, "optional")),
        reshape=reshape,
        allow_ragged_batch=as_bool(
            msg.get("allow_ragged_batch", False), join(path, "allow_ragged_batch")
        ),
    )


def _names(value: Any, path: str) -> tuple[str, ...]:
    names = tuple(as_str(v, f"{path}[{i}]") for i, v in enumerate(repeated(value)))
    if not names or not all(names):
        raise config_error(path, "name at least one tensor (and no empty names)")
    return names


def _batch_input(value: Any, path: str) -> BatchInput:
    msg = message_fields(value, path, ("kind", "target_name", "data_type", "source_input"))
    if "data_type" not in msg:
        raise config_error(path, "a batch_input needs a data_type")
    return BatchInput(
        kind=as_enum(msg.get("kind", 0), join(path, "kind"), BATCH_INPUT_KINDS),
        target_name=_names(msg.get("target_name"), join(path, "target_name")),
        data_type=as_datatype(msg["data_type"], join(path, "data_type")),
        source_input=_names(msg.get("source_input"), join(path, "source_input")),
    )


def _batch_output(value: Any, path: str) -> BatchOutput:
    msg = message_fields(value, path, ("target_name", "kind", "source_input"))
    return BatchOutput(
        target_name=_names(msg.get("target_name"), join(path, "target_name")),
        kind=as_enum(msg.get("kind", 0), join(path, "kind"), ("BATCH_SCATTER_WITH_INPUT_SHAPE",)),
        source_input=_names(msg.get("source_input"), join(path, "source_input")),
    )


def _queue_policy(value: Any, path: str) -> QueuePolicy:
    msg = message_fields(
        value,
        path,
        (
            "timeout_action",
            "default_timeout_microseconds",
            "allow_timeout_override",
            "max_queue_size",
        ),
    )
    action = as_enum(
        msg.get("timeout_action", "REJECT"), join(path, "timeout_action"), _TIMEOUT_ACTIONS
    )
    return QueuePolicy(
        timeout_action=cast(Literal["REJECT", "DELAY"], action),
        default_timeout_microseconds=as_int(
            msg.get("default_timeout_microseconds", 0),
            join(path, "default_timeout_microseconds"),
            0,
        ),
        allow_timeout_override=as_bool(
            msg.get("allow_timeout_override", False), join(path, "allow_timeout_override")
        ),
        max_queue_size=as_int(msg.get("max_queue_size", 0), join(path, "max_queue_size"), 0),
    )


def _dynamic_batching(value: Any) -> DynamicBatching:
    path = "dynamic_batching"
    msg = message_fields(
        single(value, path),
        path,
        (
            "preferred_batch_size",
            "max_queue_delay_microseconds",
            "preserve_ordering",
            "priority_levels",
            "default_priority_level",
            "default_queue_policy",
            "priority_queue_policy",
        ),
    )
    preferred = tuple(
        as_int(v, f"{path}.preferred_batch_size[{i}]", 1)
        for i, v in enumerate(repeated(msg.get("preferred_batch_size")))
    )
    priority_policies = {
        as_int(k, p, 1): _queue_policy(v, p)
        for k, v, p in map_entries(
            msg.get("priority_queue_policy"), join(path, "priority_queue_policy")
        )
    }
    return DynamicBatching(
        max_queue_delay_microseconds=as_int(
            msg.get("max_queue_delay_microseconds", 0),
            join(path, "max_queue_delay_microseconds"),
            0,
        ),
        preferred_batch_size=preferred,
        preserve_ordering=as_bool(
            msg.get("preserve_ordering", False), join(path, "preserve_ordering")
        ),
        priority_levels=as_int(msg.get("priority_levels", 0), join(path, "priority_levels"), 0),
        default_priority_level=as_int(
            msg.get("default_priority_level", 0), join(path, "default_priority_level"), 0
        ),
        default_queue_policy=_queue_policy(
            msg.get("default_queue_policy"), join(path, "default_queue_policy")
        ),
        priority_queue_policy=MappingProxyType(dict(sorted(priority_policies.items()))),
    )


def _instance_group(value: Any, path: str, model: str, index: int) -> InstanceGroup:
    msg = message_fields(
        value,
        path,
        ("name", "kind", "count", "gpus"),
        ("rate_limiter", "secondary_devices", "profile", "passive", "host_policy"),
    )
    kind = as_enum(msg.get("kind", "KIND_AUTO"), join(path, "kind"), _KINDS, "KIND_")
    if kind == "KIND_MODEL":
        raise config_error(join(path, "kind"), "KIND_MODEL is not supported yet")
    gpus = tuple(as_int(g, f"{path}.gpus[{i}]", 0) for i, g in enumerate(repeated(msg.get("gpus"))))
    if gpus and kind == "KIND_CPU":
        raise config_error(path, "a KIND_CPU instance group must not list gpus")
    return InstanceGroup(
        count=as_int(msg.get("count", 1), join(path, "count"), 1),
        kind=cast(Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU"], kind),
        gpus=gpus,
        name=as_str(msg.get("name", ""), join(path, "name")) or f"{model}_{index}",
    )


def _ensemble(value: Any) -> tuple[EnsembleStep, ...]:
    path = "ensemble_scheduling"
    msg = message_fields(single(value, path), path, ("step",))
    steps = []
    for i, raw in enumerate(repeated(msg.get("step"))):
        where = f"{path}.step[{i}]"
        step = message_fields(
            raw, where, ("model_name", "model_version", "input_map", "output_map")
        )
        model = as_str(step.get("model_name", ""), join(where, "model_name"))
        if not model:
            raise config_error(where, "model_name is required")
        version = as_int(step.get("model_version", -1), join(where, "model_version"), minimum=-1)
        inputs = string_map(step.get("input_map"), join(where, "input_map"))
        outputs = string_map(step.get("output_map"), join(where, "output_map"))
        if not inputs or not outputs:
            raise config_error(where, "input_map and output_map must each map at least one tensor")
        steps.append(EnsembleStep(model, version, inputs, outputs))
    if not steps:
        raise config_error(path, "an ensemble needs at least one step")
    return tuple(steps)


def _version_policy(value: Any) -> VersionPolicy:
    path = "version_policy"
    msg = message_fields(single(value, path), path, ("latest", "all", "specific"))
    if len(msg) > 1:
        raise config_error(path, f"set only one of latest, all, specific (got {', '.join(msg)})")
    if "all" in msg:
        message_fields(single(msg["all"], "version_policy.all"), "version_policy.all", ())
        return VersionPolicy(kind="all")
    if "specific" in msg:
        spec = message_fields(
            single(msg["specific"], f"{path}.specific"), f"{path}.specific", ("versions",)
        )
        versions = tuple(
            as_int(v, f"{path}.specific.versions[{i}]", 1)
            for i, v in enumerate(repeated(spec.get("versions")))
        )
        if not versions:
            raise config_error(f"{path}.specific", "list at least one version")
        return VersionPolicy(kind="specific", versions=tuple(sorted(set(versions))))
    latest = message_fields(
        single(msg.get("latest"), f"{path}.latest"), f"{path}.latest", ("num_versions",)
    )
    return VersionPolicy(
        kind="latest",
        num_versions=as_int(latest.get("num_versions", 1), f"{path}.latest.num_versions", 1),
    )


def _parameter_value(value: Any, path: str) -> str:
    if isinstance(value, Mapping):
        msg = message_fields(value, path, ("string_value",))
        return as_str(msg.get("string_value", ""), join(path, "string_value"))
    return as_text(value, path)


def _accelerators(value: Any, path: str) -> tuple[ExecutionAccelerator, ...]:
    out = []
    for i, item in enumerate(repeated(value)):
        msg = message_fields(item, f"{path}[{i}]", ("name", "parameters"))
        name = as_str(msg.get("name", ""), f"{path}[{i}].name")
        if not name:
            raise config_error(f"{path}[{i}]", "an execution accelerator needs a name")
        out.append(
            ExecutionAccelerator(
                name=name, parameters=string_map(msg.get("parameters"), f"{path}[{i}].parameters")
            )
        )
    return tuple(out)


def _optimization(value: Any) -> Optimization:
    path = "optimization"
    # Performance hints for Triton's own scheduler and CUDA memory handling; they never change
    # results, so they are accepted and dropped without a warning.
    hints = (
        "priority",
        "cuda",
        "input_pinned_memory",
        "output_pinned_memory",
        "gather_kernel_buffer_threshold",
        "eager_batching",
    )
    msg = message_fields(single(value, path), path, ("graph", "execution_accelerators", *hints))
    graph = message_fields(single(msg.get("graph"), f"{path}.graph"), f"{path}.graph", ("level",))
    accel_path = f"{path}.execution_accelerators"
    accelerators = message_fields(
        single(msg.get("execution_accelerators"), accel_path),
        accel_path,
        ("gpu_execution_accelerator", "cpu_execution_accelerator"),
    )
    return Optimization(
        graph_level=as_int(graph.get("level", 0), f"{path}.graph.level"),
        gpu_execution_accelerator=_accelerators(
            accelerators.get("gpu_execution_accelerator"), f"{accel_path}.gpu_execution_accelerator"
        ),
        cpu_execution_accelerator=_accelerators(
            accelerators.get("cpu_execution_accelerator"), f"{accel_path}.cpu_execution_accelerator"
        ),
    )


_WARMUP_SOURCES = ("zero_data", "random_data", "input_data_file")


def _warmup_input(value: Any, path: str) -> WarmupInput:
    msg = message_fields(value, path, ("data_type", "dims", *_WARMUP_SOURCES))
    if "data_type" not in msg:
        raise config_error(path, "a warm-up input needs a data_type")
    sources = [s for s in _WARMUP_SOURCES if s in msg]
    if len(sources) != 1:
        raise config_error(path, "set exactly one of zero_data, random_data, input_data_file")
    source = sources[0]
    data_file = ""
    if source == "input_data_file":
        data_file = as_str(msg[source], join(path, source))
        if not data_file:
            raise config_error(join(path, source), "must name a file")
    else:
        as_bool(msg[source], join(path, source))
    return WarmupInput(
        data_type=as_datatype(msg["data_type"], join(path, "data_type")),
        dims=as_shape(msg.get("dims"), join(path, "dims"), concrete=True),
        source=cast(Literal["zero_data", "random_data", "input_data_file"], source),
        input_data_file=data_file,
    )


def _warmup(value: Any, path: str, index: int) -> ModelWarmup:
    msg = message_fields(value, path, ("name", "batch_size", "inputs", "count"))
    inputs = {
        as_str(k, p): _warmup_input(v, p)
        for k, v, p in map_entries(msg.get("inputs"), join(path, "inputs"))
    }
    if not inputs:
        raise config_error(path, "a warm-up sample needs inputs")
    count = as_int(msg.get("count", 1), join(path, "count"), 0)
    return ModelWarmup(
        name=as_str(msg.get("name", ""), join(path, "name")) or f"warmup_{index}",
        batch_size=as_int(msg.get("batch_size", 1), join(path, "batch_size"), 1),
        inputs=MappingProxyType(inputs),
        # Triton runs a sample once when count is 0.
        count=max(count, 1),
    )
