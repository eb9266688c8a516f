"""config_to_pbtxt: the text reads back to the same config, and Triton's protobuf accepts it."""

from __future__ import annotations

import importlib.util
from types import MappingProxyType
from typing import Any

import pytest

from forwardpass.datatypes import DataType
from forwardpass.model_config import (
    DynamicBatching,
    ExecutionAccelerator,
    InstanceGroup,
    ModelConfig,
    ModelWarmup,
    Optimization,
    QueuePolicy,
    TensorSpec,
    VersionPolicy,
    WarmupInput,
)
from forwardpass.repository import config_from_dict, parse_pbtxt
from forwardpass.repository.pbtxt_writer import config_to_pbtxt

FULL = ModelConfig(
    name="full",
    max_batch_size=16,
    inputs=(
        TensorSpec("pixels", DataType.FP32, (3, 32, 32)),
        TensorSpec("mask", DataType.BOOL, (-1,), optional=True),
        TensorSpec("text", DataType.BYTES, ()),
    ),
    outputs=(
        TensorSpec("probs", DataType.FP32, (10,), label_filename="labels.txt"),
        TensorSpec("flat", DataType.FP16, (3072,), reshape=(3, 1024)),
    ),
    dynamic_batching=DynamicBatching(
        max_queue_delay_microseconds=500,
        preferred_batch_size=(4, 8),
        preserve_ordering=True,
        priority_levels=3,
        default_priority_level=2,
        default_queue_policy=QueuePolicy("DELAY", 1000, True, 64),
        priority_queue_policy=MappingProxyType({1: QueuePolicy(max_queue_size=8)}),
    ),
    instance_group=(InstanceGroup(2, "KIND_CPU", name="cpu"), InstanceGroup(1, "KIND_GPU", (0, 1))),
    version_policy=VersionPolicy(kind="specific", versions=(1, 2)),
    default_model_filename="net.onnx",
    parameters=MappingProxyType(
        {"intra_op_thread_count": "2", "note": 'quote " back\\slash\nnewline \x01 é'}
    ),
    optimization=Optimization(
        graph_level=-1,
        gpu_execution_accelerator=(
            ExecutionAccelerator("tensorrt", MappingProxyType({"precision_mode": "FP16"})),
        ),
        cpu_execution_accelerator=(ExecutionAccelerator("openvino"),),
    ),
    model_warmup=(
        ModelWarmup(
            "zeros",
            4,
            MappingProxyType(
                {
                    "pixels": WarmupInput(DataType.FP32, (3, 32, 32)),
                    "mask": WarmupInput(DataType.BOOL, (5,), "random_data"),
                    "text": WarmupInput(DataType.BYTES, (1,), "input_data_file", "raw/text"),
                }
            ),
            count=2,
        ),
    ),
)
UNBATCHED = ModelConfig(
    name="plain",
    inputs=(TensorSpec("x", DataType.INT64, (2, -1)),),
    outputs=(TensorSpec("y", DataType.FP64, ()),),
    version_policy=VersionPolicy(kind="all"),
)


def _complete(config: ModelConfig) -> ModelConfig:
    """Instance groups read back with their default names; compare against that."""
    groups = tuple(
        InstanceGroup(g.count, g.kind, g.gpus, g.name or f"{config.name}_{i}")
        for i, g in enumerate(config.instance_group)
    )
    return config.__class__(**{**_fields(config), "instance_group": groups})


def _fields(config: ModelConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@pytest.mark.parametrize("config", [FULL, UNBATCHED], ids=["full", "unbatched"])
def test_round_trip(config: ModelConfig) -> None:
    text = config_to_pbtxt(config)
    assert config_from_dict(parse_pbtxt(text), name=config.name) == _complete(config)


def test_what_is_printed() -> None:
    text = config_to_pbtxt(UNBATCHED)
    assert "max_batch_size: 0" in text  # 0 means never batch; absent would mean "decide"
    assert "dims: []" in text  # a scalar per item, not "read the dims from the model"
    assert "all { }" in text  # the oneof's choice survives although the message is empty
    assert "data_type: TYPE_INT64" in text  # enums unquoted
    assert "optional" not in text and "label_filename" not in text  # defaults left out
    assert '\\"' in config_to_pbtxt(FULL) and "\\001" in config_to_pbtxt(FULL)


def _triton_schema() -> Any:
    from google.protobuf import descriptor_pool, message_factory

    try:
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
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.ModelConfig


@pytest.mark.parametrize("config", [FULL, UNBATCHED], ids=["full", "unbatched"])
def test_triton_protobuf_parses_the_text(config: ModelConfig) -> None:
    text_format = pytest.importorskip("google.protobuf.text_format")
    message = text_format.Parse(config_to_pbtxt(config), _triton_schema()())
    assert message.name == config.name
    assert message.max_batch_size == config.max_batch_size
    assert [i.name for i in message.input] == [i.name for i in config.inputs]
    assert [list(o.dims) for o in message.output] == [list(o.dims) for o in config.outputs]
    assert dict(message.parameters.items()).keys() == dict(config.parameters).keys()
    for key, value in config.parameters.items():
        assert message.parameters[key].string_value == value


def test_ensemble_maps_round_trip() -> None:
    from forwardpass.model_config import EnsembleStep

    ensemble = ModelConfig(
        name="ens",
        platform="ensemble",
        backend="",
        max_batch_size=8,
        inputs=(TensorSpec("x", DataType.FP32, (3,)),),
        outputs=(TensorSpec("y", DataType.FP32, (3,)),),
        ensemble=(
            EnsembleStep("a", input_map=MappingProxyType({"x": "x"}), output_map={"y": "t"}),
            EnsembleStep("b", 2, MappingProxyType({"x": "t"}), MappingProxyType({"y": "y"})),
        ),
    )
    once = config_from_dict(parse_pbtxt(config_to_pbtxt(ensemble)), name="ens")
    assert once.ensemble == ensemble.ensemble
    assert config_from_dict(parse_pbtxt(config_to_pbtxt(once)), name="ens") == once
