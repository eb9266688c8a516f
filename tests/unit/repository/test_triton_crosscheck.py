"""Cross-check against Triton's own schema: protobuf parses each text, and we must agree.

tritonclient ships the compiled ``model_config.proto`` (``tritonclient/grpc/model_config_pb2.py``).
It is loaded by file path, so grpc need not be installed. For each realistic ``config.pbtxt``:

1. ``text_format.Parse`` into Triton's ``ModelConfig`` message, then ``MessageToDict`` (protobuf
   JSON, 64-bit integers as strings): reading that dict must give the same :class:`ModelConfig`
   as our own parser reading the text;
2. ``config_to_dict`` must be JSON that protobuf accepts as a ``ModelConfig`` (Triton's field and
   enum names), carrying the same values as the text for every field forwardpass supports.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest

from forwardpass.repository import config_from_dict, config_to_dict, parse_pbtxt

json_format = pytest.importorskip("google.protobuf.json_format")
text_format = pytest.importorskip("google.protobuf.text_format")


def _triton_schema() -> Any:
    """Triton's ``ModelConfig`` message class."""
    from google.protobuf import descriptor_pool, message_factory

    try:  # already registered (tritonclient.grpc imported elsewhere)
        descriptor = descriptor_pool.Default().FindMessageTypeByName("inference.ModelConfig")
        return message_factory.GetMessageClass(descriptor)
    except KeyError:
        pass
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed")
    path = next(iter(spec.submodule_search_locations)) + "/grpc/model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    if module_spec is None or module_spec.loader is None:
        pytest.skip("tritonclient has no grpc/model_config_pb2.py")
    module: ModuleType = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.ModelConfig


@pytest.fixture(scope="module")
def schema() -> Any:
    return _triton_schema()


CONFIGS = {
    # Triton's densenet_onnx example, unbatched, with reshapes and a labels file.
    "densenet_onnx": """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
""",
    # A batched text classifier: priorities, queue policies, several instance groups.
    "sentiment": """
name: "sentiment"
backend: "onnxruntime"
max_batch_size: 32
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] optional: true }
]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] } ]
dynamic_batching {
  preferred_batch_size: [ 8, 16, 32 ]
  max_queue_delay_microseconds: 2000
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 100000
    allow_timeout_override: true
    max_queue_size: 256
  }
  priority_queue_policy {
    key: 1
    value: { timeout_action: DELAY default_timeout_microseconds: 500000 max_queue_size: 64 }
  }
  priority_queue_policy {
    key: 3
    value: { max_queue_size: 16 }
  }
}
instance_group [
  { name: "gpu_pool" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] },
  { name: "cpu_pool" count: 4 kind: KIND_CPU }
]
version_policy: { latest: { num_versions: 2 } }
""",
    # ONNX Runtime tuning as Triton's onnxruntime backend reads it.
    "detector": """
name: "detector"
platform: "onnxruntime_onnx"
default_model_filename: "yolo.onnx"
max_batch_size: 4
input { name: "images" data_type: TYPE_FP16 dims: [ 3, 640, 640 ] }
output { name: "boxes" data_type: TYPE_FP16 dims: [ -1, 6 ] }
output { name: "count" data_type: TYPE_INT32 dims: [ 1 ] }
version_policy { all { } }
parameters { key: "intra_op_thread_count" value: { string_value: "4" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
parameters { key: "execution_mode" value: { string_value: "1" } }
parameters { key: "enable_mem_arena" value: { string_value: "false" } }
optimization {
  graph { level: -1 }
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      }
    ]
    cpu_execution_accelerator: [ { name: "openvino" } ]
  }
}
instance_group [ { name: "detector_0" kind: KIND_GPU count: 1 } ]
""",
    # Warm-up samples of every kind, a BYTES input and a specific version list.
    "tokenizer": """
name: "tokenizer"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "text" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "lengths" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "scale" data_type: TYPE_BF16 dims: [ 4 ] }
]
output [ { name: "tokens" data_type: TYPE_INT64 dims: [ -1 ] } ]
version_policy: { specific: { versions: [ 1, 3 ] } }
model_warmup [
  {
    name: "zeros"
    batch_size: 8
    count: 3
    inputs { key: "text" value: { data_type: TYPE_STRING dims: [ 1 ] zero_data: true } }
    inputs { key: "lengths" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } }
    inputs { key: "scale" value: { data_type: TYPE_BF16 dims: [ 4 ] zero_data: true } }
  },
  {
    name: "sample"
    batch_size: 1
    count: 1
    inputs { key: "text" value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "text" } }
    inputs { key: "lengths" value: { data_type: TYPE_INT32 dims: [ 1 ] random_data: true } }
    inputs { key: "scale" value: { data_type: TYPE_BF16 dims: [ 4 ] random_data: true } }
  }
]
""",
    # Every syntax variant at once: repeated scalars, no colons, separators, quotes, hex.
    "syntax_zoo": """
# leading comment
name: 'syntax_zoo';
max_batch_size: 0x10,
input < name: "in\\x30" data_type: TYPE_UINT8 dims: 2 dims: 2 dims: [ 3 ] >
input: { name: 'in1' data_type: TYPE_BOOL dims: [-1] }   # trailing comment
output { name: "out\\t0" data_type: TYPE_FP64 dims: [ 4 ] label_filename: "lab'els.txt" }
dynamic_batching { preferred_batch_size: 2 preferred_batch_size: 4;
                   max_queue_delay_microseconds: 0x64 }
instance_group { name: "a" count: 1 kind: KIND_AUTO }
instance_group { name: "b" count: 2 kind: KIND_CPU }
parameters: { key: "x" value: { string_value: "multi" "part" } }
parameters: [ { key: "y" value: { string_value: "" } } ]
version_policy { specific { versions: 5 versions: 7 } }
""",
}

#: Top-level fields whose values forwardpass keeps; each must survive both directions.
SUPPORTED = (
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
)


def _prune(value: Any) -> Any:
    """Drop empty sub-messages: protobuf JSON prints a set-but-default message as ``{}``."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _protobuf_dict(schema: Any, text: str) -> dict[str, Any]:
    message = text_format.Parse(text, schema())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_parser_agrees_with_protobuf(schema: Any, model: str) -> None:
    text = CONFIGS[model]
    reference = config_from_dict(_protobuf_dict(schema, text), name=model)
    assert config_from_dict(parse_pbtxt(text), name=model) == reference


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_json_output_is_tritons_schema(schema: Any, model: str) -> None:
    text = CONFIGS[model]
    ours = config_to_dict(config_from_dict(parse_pbtxt(text), name=model))
    message = json_format.ParseDict(ours, schema())  # rejects unknown field or enum names
    got = json_format.MessageToDict(message, preserving_proto_field_name=True)
    expected = _protobuf_dict(schema, text)
    for tensor in expected.get("input", []):
        tensor.pop("format", None)  # a layout hint forwardpass does not keep
    # Triton prints its pinned-memory defaults; only the parts forwardpass reads must agree.
    for part in ("input_pinned_memory", "output_pinned_memory"):
        got.get("optimization", {}).pop(part, None)
    for key in SUPPORTED:
        if key in expected:
            assert _prune(got.get(key)) == _prune(expected[key]), key


def test_spot_values(schema: Any) -> None:
    zoo = config_from_dict(parse_pbtxt(CONFIGS["syntax_zoo"]), name="syntax_zoo")
    assert zoo.max_batch_size == 16
    assert [t.name for t in zoo.inputs] == ["in0", "in1"]
    assert zoo.inputs[0].dims == (2, 2, 3)
    assert zoo.outputs[0].name == "out\t0"
    assert zoo.outputs[0].label_filename == "lab'els.txt"
    assert zoo.dynamic_batching is not None
    assert zoo.dynamic_batching.max_queue_delay_microseconds == 100
    assert dict(zoo.parameters) == {"x": "multipart", "y": ""}
    assert zoo.version_policy.versions == (5, 7)
