"""Config dicts (pbtxt, YAML, Triton JSON) to ModelConfig and back, and their validation."""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import (
    DynamicBatching,
    ExecutionAccelerator,
    InstanceGroup,
    ModelConfig,
    QueuePolicy,
    TensorSpec,
    VersionPolicy,
    WarmupInput,
)
from forwardpass.repository import config_from_dict, config_to_dict, parse_pbtxt

FULL_PBTXT = """
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  { name: "pixels" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] },
  { name: "mask" data_type: TYPE_BOOL dims: [ -1 ] optional: true }
]
output { name: "probs" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" }
output { name: "flat" data_type: TYPE_FP16 dims: [ 3072 ] reshape { shape: [ 3, 1024 ] } }
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000
                         allow_timeout_override: true max_queue_size: 64 }
  priority_queue_policy { key: 1 value: { timeout_action: REJECT max_queue_size: 8 } }
}
instance_group [ { name: "cpu" count: 2 kind: KIND_CPU },
                 { count: 1 kind: KIND_GPU gpus: [ 0, 1 ] } ]
version_policy: { specific: { versions: [ 2, 1 ] } }
default_model_filename: "net.onnx"
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "enable_mem_arena" value: { string_value: "true" } }
optimization {
  graph { level: 1 }
  execution_accelerators {
    gpu_execution_accelerator: [ { name: "tensorrt"
      parameters { key: "precision_mode" value: "FP16" } } ]
    cpu_execution_accelerator: [ { name: "openvino" } ]
  }
}
model_warmup [
  { name: "zeros" batch_size: 4 count: 2
    inputs { key: "pixels" value: { data_type: TYPE_FP32 dims: [ 3, 32, 32 ] zero_data: true } } }
]
"""

FULL_YAML = """
name: classifier
backend: onnxruntime
max_batch_size: 16
input:
  - {name: pixels, data_type: FP32, dims: [3, 32, 32]}
  - {name: mask, data_type: TYPE_BOOL, dims: [-1], optional: true}
output:
  - {name: probs, data_type: FP32, dims: [10], label_filename: labels.txt}
  - {name: flat, data_type: FP16, dims: [3072], reshape: {shape: [3, 1024]}}
dynamic_batching:
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 500
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy:
    timeout_action: DELAY
    default_timeout_microseconds: 1000
    allow_timeout_override: true
    max_queue_size: 64
  priority_queue_policy:
    1: {timeout_action: REJECT, max_queue_size: 8}
instance_group:
  - {name: cpu, count: 2, kind: KIND_CPU}
  - {count: 1, kind: GPU, gpus: [0, 1]}
version_policy: {specific: {versions: [1, 2]}}
default_model_filename: net.onnx
parameters:
  intra_op_thread_count: 2
  enable_mem_arena: true
optimization:
  graph: {level: 1}
  execution_accelerators:
    gpu_execution_accelerator:
      - name: tensorrt
        parameters: {precision_mode: FP16}
    cpu_execution_accelerator: [{name: openvino}]
model_warmup:
  - name: zeros
    batch_size: 4
    count: 2
    inputs:
      pixels: {data_type: FP32, dims: [3, 32, 32], zero_data: true}
"""


def test_full_pbtxt_reads_every_field() -> None:
    config = config_from_dict(parse_pbtxt(FULL_PBTXT), name="classifier")
    assert config.name == "classifier"
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 16
    assert config.inputs == (
        TensorSpec("pixels", DataType.FP32, (3, 32, 32)),
        TensorSpec("mask", DataType.BOOL, (-1,), optional=True),
    )
    assert config.outputs == (
        TensorSpec("probs", DataType.FP32, (10,), label_filename="labels.txt"),
        TensorSpec("flat", DataType.FP16, (3072,), reshape=(3, 1024)),
    )
    assert config.dynamic_batching == DynamicBatching(
        max_queue_delay_microseconds=500,
        preferred_batch_size=(4, 8),
        preserve_ordering=True,
        priority_levels=3,
        default_priority_level=2,
        default_queue_policy=QueuePolicy("DELAY", 1000, True, 64),
        priority_queue_policy=MappingProxyType({1: QueuePolicy("REJECT", 0, False, 8)}),
    )
    assert config.instance_group == (
        InstanceGroup(count=2, kind="KIND_CPU", name="cpu"),
        InstanceGroup(count=1, kind="KIND_GPU", gpus=(0, 1), name="classifier_1"),
    )
    assert config.version_policy == VersionPolicy(kind="specific", versions=(1, 2))
    assert config.default_model_filename == "net.onnx"
    assert dict(config.parameters) == {"intra_op_thread_count": "2", "enable_mem_arena": "true"}
    assert config.optimization.graph_level == 1
    assert config.optimization.gpu_execution_accelerator == (
        ExecutionAccelerator("tensorrt", MappingProxyType({"precision_mode": "FP16"})),
    )
    assert config.optimization.cpu_execution_accelerator == (ExecutionAccelerator("openvino"),)
    (warmup,) = config.model_warmup
    assert (warmup.name, warmup.batch_size, warmup.count) == ("zeros", 4, 2)
    assert dict(warmup.inputs) == {"pixels": WarmupInput(DataType.FP32, (3, 32, 32))}


def test_yaml_form_reads_the_same() -> None:
    from_pbtxt = config_from_dict(parse_pbtxt(FULL_PBTXT), name="classifier")
    from_yaml = config_from_dict(yaml.safe_load(FULL_YAML), name="classifier")
    assert from_yaml == from_pbtxt


def test_triton_json_round_trip() -> None:
    config = config_from_dict(parse_pbtxt(FULL_PBTXT), name="classifier")
    as_json = config_to_dict(config)
    assert config_from_dict(as_json, name="classifier") == config


def test_json_int64_as_strings() -> None:
    config = config_from_dict(
        {
            "max_batch_size": 4,
            "input": [{"name": "x", "data_type": "TYPE_INT64", "dims": ["-1", "5"]}],
            "output": [{"name": "y", "data_type": "TYPE_STRING", "dims": ["1"]}],
            "dynamic_batching": {"max_queue_delay_microseconds": "100"},
        },
        name="m",
    )
    assert config.inputs[0].dims == (-1, 5)
    assert config.outputs[0].datatype is DataType.BYTES
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.max_queue_delay_microseconds == 100


def test_defaults_for_an_empty_config() -> None:
    config = config_from_dict({}, name="m")
    assert config == ModelConfig(
        name="m", instance_group=(InstanceGroup(name="m_0"),), parameters=MappingProxyType({})
    )
    assert config.dynamic_batching is None


def test_enum_numbers_and_single_repeated_values() -> None:
    config = config_from_dict(
        parse_pbtxt(
            "input { name: 'x' data_type: 11 dims: 4 } instance_group { kind: 2 count: 3 }"
        ),
        name="m",
    )
    assert config.inputs[0] == TensorSpec("x", DataType.FP32, (4,))
    assert config.instance_group == (InstanceGroup(count=3, kind="KIND_CPU", name="m_0"),)


def test_backend_and_platform_normalisation() -> None:
    assert config_from_dict({"backend": "onnxruntime"}, name="m").platform == "onnxruntime_onnx"
    null = config_from_dict({"backend": "null"}, name="m")
    assert (null.backend, null.platform) == ("null", "")
    torch = config_from_dict({"platform": "pytorch_libtorch"}, name="m")
    assert (torch.backend, torch.default_model_filename) == ("pytorch", "model.pt")
    with pytest.raises(InvalidModelConfig, match="contradicts backend 'onnxruntime'"):
        config_from_dict({"backend": "onnxruntime", "platform": "tensorrt_plan"}, name="m")
    with pytest.raises(InvalidModelConfig, match="unknown platform 'caffe2_netdef'"):
        config_from_dict({"platform": "caffe2_netdef"}, name="m")


def test_yaml_map_entry_form_and_plain_mapping() -> None:
    entry = config_from_dict({"parameters": {"key": "a", "value": {"string_value": "1"}}}, name="m")
    plain = config_from_dict({"parameters": {"a": 1}}, name="m")
    assert dict(entry.parameters) == dict(plain.parameters) == {"a": "1"}


def test_version_policies() -> None:
    def policy(text: str) -> VersionPolicy:
        return config_from_dict(parse_pbtxt(text), name="m").version_policy

    assert policy("") == VersionPolicy()
    assert policy("version_policy { latest { num_versions: 3 } }") == VersionPolicy("latest", 3)
    assert policy("version_policy { all { } }") == VersionPolicy("all")
    assert policy("version_policy: { all: {} }") == VersionPolicy("all")
    assert policy("version_policy { specific { versions: 3 versions: 1 } }") == VersionPolicy(
        "specific", versions=(1, 3)
    )
    assert config_from_dict(
        yaml.safe_load("version_policy: {all: }"), name="m"
    ).version_policy == VersionPolicy("all")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_sise: 4", r"unknown field 'max_batch_sise'; did you mean 'max_batch_size'\?"),
        ("dynamic_batching { max_delay: 1 }", r"unknown field 'max_delay' in dynamic_batching"),
        ("input { name: 'x' data_type: TYPE_FP32 dims: 1 label_filename: 'a' }", "label_filename"),
        ("output { name: 'y' data_type: TYPE_FP32 dims: 1 optional: true }", "'optional'"),
        ("sequence_batching { direct { } oldest { } }", "set only one strategy"),
        ("ensemble_scheduling { step [ ] }", 'only a model with platform "ensemble" has steps'),
        ("platform: 'ensemble'", "an ensemble needs its steps"),
        ("platform: 'ensemble' ensemble_scheduling { }", "at least one step"),
        (
            "platform: 'ensemble' ensemble_scheduling { step [ { model_name: 'a' } ] }",
            "input_map and output_map",
        ),
        ("platform: 'ensemble' backend: 'onnxruntime' ensemble_scheduling { }", "has no backend"),
        (
            "batch_input [ { kind: BATCH_ELEMENT_COUNT } ]",
            r"batch_input\[0\]: a batch_input needs a data_type",
        ),
        (
            "batch_input [ { kind: BATCH_COUNT target_name: 'n' data_type: TYPE_INT32 "
            "source_input: 'x' } ]",
            r"batch_input\[0\].kind: expected one of BATCH_ELEMENT_COUNT",
        ),
        (
            "batch_input [ { kind: BATCH_ELEMENT_COUNT data_type: TYPE_INT32 source_input: 'x' } ]",
            r"batch_input\[0\].target_name: name at least one tensor",
        ),
        (
            "max_batch_size: 4 input { name: 'x' data_type: TYPE_FP32 dims: -1 } "
            "output { name: 'y' data_type: TYPE_FP32 dims: 1 } "
            "batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: 'n' data_type: TYPE_STRING "
            "source_input: 'x' } ]",
            "data_type TYPE_STRING is not one of TYPE_INT32, TYPE_INT64, TYPE_FP32",
        ),
        (
            "max_batch_size: 4 input { name: 'x' data_type: TYPE_FP32 dims: -1 } "
            "output { name: 'y' data_type: TYPE_FP32 dims: 1 } "
            "batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: 'n' data_type: TYPE_INT32 "
            "source_input: 'z' } ]",
            r"source_input 'z' is not an input of the model \(inputs: \['x'\]\)",
        ),
        (
            "max_batch_size: 4 input { name: 'x' data_type: TYPE_FP32 dims: -1 } "
            "output { name: 'y' data_type: TYPE_FP32 dims: 1 } "
            "batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: 'x' data_type: TYPE_INT32 "
            "source_input: 'x' } ]",
            "target_name 'x' is also a declared input",
        ),
        (
            "max_batch_size: 4 input { name: 'x' data_type: TYPE_FP32 dims: -1 } "
            "output { name: 'y' data_type: TYPE_FP32 dims: 1 } "
            "batch_output [ { kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: 'w' "
            "source_input: 'x' } ]",
            r"target_name 'w' is not an output of the model \(outputs: \['y'\]\)",
        ),
        (
            "input { name: 'x' data_type: TYPE_FP32 dims: -1 allow_ragged_batch: true }",
            "input 'x' allows ragged batches, which needs max_batch_size > 0",
        ),
        ("model_transaction_policy { decoupled: true }", "decoupled models need backend 'python'"),
        ("name: 'other'", "config name 'other' does not match the model's folder name 'm'"),
        ("max_batch_size: -1", "max_batch_size: must be >= 0, got -1"),
        ("max_batch_size: 1 max_batch_size: 2", "max_batch_size: expected a single value"),
        ("max_batch_size: 'x'", "max_batch_size: expected an integer"),
        ("input { data_type: TYPE_FP32 dims: 1 }", r"input\[0\]: every input needs a name"),
        ("input { name: 'x' data_type: TYPE_FP32 dims: [ 4, 0 ] }", "dimension 1 is 0"),
        ("input { name: 'x' data_type: TYPE_FP32 dims: [ -2 ] }", "dimension 0 is -2"),
        ("input { name: 'x' data_type: TYPE_FP33 dims: 1 }", "unknown data_type 'TYPE_FP33'"),
        ("input { name: 'x' data_type: TYPE_INVALID dims: 1 }", "unknown data_type"),
        ("input { name: 'x' data_type: TYPE_FP32 dims: 1 is_shape_tensor: true }", "shape_tensor"),
        (
            "input { name: 'x' data_type: TYPE_FP32 dims: 1 }"
            "input { name: 'x' data_type: TYPE_FP32 dims: 1 }",
            "input name 'x' is declared twice",
        ),
        (
            "input { name: 'x' data_type: TYPE_FP32 dims: [4, 4] reshape { shape: [ 3 ] } }",
            r"reshape \[3\] holds 3 elements but dims \[4, 4\] hold 16",
        ),
        ("input { name: 'x' data_type: TYPE_FP32 }", "input 'x' has no dims"),
        ("input { name: 'x' dims: 1 }", "input 'x' has no data_type"),
        (
            "max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 2, 8 ] }",
            "preferred_batch_size 8 exceeds max_batch_size 4",
        ),
        ("dynamic_batching { preferred_batch_size: 0 }", "must be >= 1"),
        (
            "dynamic_batching { priority_levels: 2 }",
            r"default_priority_level must be in 1\.\.2",
        ),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 3 value { } } }",
            r"priority_queue_policy has level 3, outside 1\.\.2",
        ),
        ("dynamic_batching { default_priority_level: 1 }", "need priority_levels > 0"),
        (
            "dynamic_batching { default_queue_policy { timeout_action: DROP } }",
            "expected one of REJECT, DELAY",
        ),
        ("instance_group { count: 0 }", r"instance_group\[0\]\.count: must be >= 1"),
        ("instance_group { kind: KIND_CPU gpus: 0 }", "KIND_CPU instance group must not list"),
        ("instance_group { kind: KIND_MODEL }", "KIND_MODEL is not supported"),
        ("version_policy { all {} latest {} }", "set only one of latest, all, specific"),
        ("version_policy { specific { } }", "list at least one version"),
        ("version_policy { latest { num_versions: 0 } }", "num_versions: must be >= 1"),
        ("parameters { key: 'a' value { int_value: 1 } }", "unknown field 'int_value'"),
        (
            "parameters { key: 'a' value { string_value: '1' } } "
            "parameters { key: 'a' value { string_value: '2' } }",
            "key 'a' appears twice",
        ),
        ("optimization { graph { level: 1 } graph { level: 2 } }", "expected a single value"),
        (
            "optimization { execution_accelerators { gpu_execution_accelerator { } } }",
            "needs a name",
        ),
        ("model_warmup { name: 'w' }", "a warm-up sample needs inputs"),
        (
            "model_warmup { inputs { key: 'x' value { data_type: TYPE_FP32 dims: 1 } } }",
            "set exactly one of zero_data, random_data, input_data_file",
        ),
        (
            "model_warmup { inputs { key: 'x' value { data_type: TYPE_FP32 dims: -1 "
            "zero_data: true } } }",
            "dimension 0 is -1; dimensions must be positive",
        ),
        (
            "max_batch_size: 2 input { name: 'x' data_type: TYPE_FP32 dims: 1 } "
            "model_warmup { batch_size: 3 inputs { key: 'x' value { data_type: TYPE_FP32 "
            "dims: 1 zero_data: true } } }",
            "batch_size 3 exceeds max_batch_size 2",
        ),
        (
            "input { name: 'x' data_type: TYPE_FP32 dims: 1 } "
            "model_warmup { name: 'w' inputs { key: 'z' value { data_type: TYPE_FP32 "
            "dims: 1 zero_data: true } } }",
            "names input 'z', which the model does not have",
        ),
        (
            "input { name: 'x' data_type: TYPE_FP32 dims: 1 } "
            "model_warmup { name: 'w' inputs { key: 'x' value { data_type: TYPE_INT8 "
            "dims: 1 zero_data: true } } }",
            "is TYPE_INT8, the model input is TYPE_FP32",
        ),
    ],
)
def test_invalid_configs(text: str, message: str) -> None:
    with pytest.raises(InvalidModelConfig, match=message):
        config_from_dict(parse_pbtxt(text), name="m")


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidModelConfig, match="dynamic_batching: expected a message"):
        config_from_dict({"dynamic_batching": 3}, name="m")
    with pytest.raises(InvalidModelConfig, match="expected a message"):
        config_from_dict(["not", "a", "dict"], name="m")  # type: ignore[arg-type]


def test_harmless_triton_fields_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = """
    model_metrics { }
    model_transaction_policy { decoupled: false }
    metric_tags { key: "team" value: "vision" }
    instance_group { count: 1 host_policy: "numa0" }
    optimization { input_pinned_memory { enable: true } priority: PRIORITY_MAX }
    """
    with caplog.at_level(logging.WARNING, logger="forwardpass.repository"):
        config = config_from_dict(parse_pbtxt(text), name="m")
    assert config.instance_group == (InstanceGroup(name="m_0"),)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert config.response_cache.enable is False
    assert "metric_tags" in warned
    assert "instance_group[0].host_policy" in warned
    assert "model_transaction_policy" not in warned
    assert "pinned" not in warned


def test_default_valued_ignored_fields_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    config = config_from_dict(parse_pbtxt(FULL_PBTXT), name="classifier")
    with caplog.at_level(logging.WARNING, logger="forwardpass.repository"):
        config_from_dict(config_to_dict(config), name="classifier")
    assert not caplog.records


def test_config_to_dict_uses_tritons_names() -> None:
    config = config_from_dict(parse_pbtxt(FULL_PBTXT), name="classifier")
    out: dict[str, Any] = config_to_dict(config)
    assert out["input"][0] == {
        "name": "pixels",
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NONE",
        "dims": [3, 32, 32],
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
        "is_non_linear_format_io": False,
    }
    assert out["output"][0] == {
        "name": "probs",
        "data_type": "TYPE_FP32",
        "dims": [10],
        "label_filename": "labels.txt",
        "is_shape_tensor": False,
        "is_non_linear_format_io": False,
    }
    assert out["output"][1]["reshape"] == {"shape": [3, 1024]}
    assert out["version_policy"] == {"specific": {"versions": [1, 2]}}
    assert out["parameters"]["intra_op_thread_count"] == {"string_value": "2"}
    assert out["dynamic_batching"]["priority_queue_policy"]["1"]["max_queue_size"] == 8
    assert out["instance_group"][0]["kind"] == "KIND_CPU"
    assert out["model_warmup"][0]["inputs"]["pixels"]["zero_data"] is True
    assert out["optimization"]["graph"] == {"level": 1}
    strings = config_from_dict(
        {"output": [{"name": "s", "data_type": "BYTES", "dims": [1]}]}, name="m"
    )
    assert config_to_dict(strings)["output"][0]["data_type"] == "TYPE_STRING"
    assert config_to_dict(config_from_dict({}, name="m"))["version_policy"] == {
        "latest": {"num_versions": 1}
    }
