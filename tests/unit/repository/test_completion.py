"""Completing configs from ONNX models: batching decisions, filling gaps, contradictions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import DynamicBatching, ModelConfig, TensorSpec
from forwardpass.repository import complete_config, config_from_dict, parse_pbtxt
from forwardpass.runtime.base import BackendIO
from forwardpass.runtime.onnx import describe_onnx

F32 = TensorProto.FLOAT


@pytest.fixture
def describe(tmp_path: Path) -> Callable[[onnx.ModelProto], BackendIO]:
    def run(model: onnx.ModelProto) -> BackendIO:
        path = tmp_path / "model.onnx"
        onnx.save(model, str(path))
        return describe_onnx(path)

    return run


def _io(inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]]) -> BackendIO:
    return BackendIO(
        inputs=tuple(TensorSpec(n, DataType.FP32, s) for n, s in inputs.items()),
        outputs=tuple(TensorSpec(n, DataType.FP32, s) for n, s in outputs.items()),
    )


MLP_IO = _io({"x": (-1, 4)}, {"y": (-1, 3)})


def test_mlp_with_dynamic_batch_is_batched(describe: Any, mlp_model: Any) -> None:
    # As Triton's onnxruntime backend completes it: max_batch_size 4 (its default-max-batch-
    # size), dynamic batching on, and (core's normalization) preferred_batch_size [4].
    config = complete_config(None, describe(mlp_model()), name="mlp")
    assert config.max_batch_size == 4
    assert config.inputs == (TensorSpec("x", DataType.FP32, (4,)),)
    assert config.outputs == (TensorSpec("y", DataType.FP32, (3,)),)
    assert config.dynamic_batching == DynamicBatching(preferred_batch_size=(4,))
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert complete_config(None, MLP_IO, name="m", default_max_batch_size=8).max_batch_size == 8


def test_fixed_batch_of_one_serves_unbatched(describe: Any, identity_model: Any) -> None:
    model = identity_model([("x", F32, [1, 4])], [("y", F32, [1, 4])])
    config = complete_config(None, describe(model), name="m")
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (1, 4)
    assert config.dynamic_batching is None


def test_dynamic_axis_second_serves_unbatched(describe: Any, identity_model: Any) -> None:
    model = identity_model([("x", F32, [3, "n"])], [("y", F32, [3, "n"])])
    config = complete_config(None, describe(model), name="m")
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (3, -1)
    assert config.outputs[0].dims == (3, -1)


def test_scalar_input_serves_unbatched(describe: Any, identity_model: Any) -> None:
    model = identity_model([("s", TensorProto.INT64, [])], [("t", TensorProto.INT64, [])])
    config = complete_config(None, describe(model), name="m")
    assert config.max_batch_size == 0
    assert config.inputs == (TensorSpec("s", DataType.INT64, ()),)


def test_one_fixed_output_prevents_batching() -> None:
    config = complete_config(None, _io({"x": (-1, 4)}, {"y": (1,)}), name="m")
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (-1, 4)


def test_partial_config_batching_only_fills_tensors() -> None:
    partial = parse_pbtxt("max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 50 }")
    config = complete_config(partial, MLP_IO, name="m")
    assert config.max_batch_size == 8
    assert config.dynamic_batching == DynamicBatching(
        max_queue_delay_microseconds=50, preferred_batch_size=(8,)
    )
    assert [t.dims for t in config.inputs + config.outputs] == [(4,), (3,)]


def test_config_without_max_batch_size_keeps_its_dynamic_batching() -> None:
    config = complete_config({"dynamic_batching": {"preferred_batch_size": [2]}}, MLP_IO, name="m")
    assert config.max_batch_size == 4
    assert config.dynamic_batching == DynamicBatching(preferred_batch_size=(2,))


def test_inputs_without_dims_or_datatype_are_filled() -> None:
    io = _io({"a": (-1, 2), "b": (-1, 5)}, {"y": (-1, 1)})
    config = complete_config({"input": [{"name": "b"}], "max_batch_size": 4}, io, name="m")
    # declared tensors first, in config order, then the model's other tensors
    assert config.inputs == (
        TensorSpec("b", DataType.FP32, (5,)),
        TensorSpec("a", DataType.FP32, (2,)),
    )


def test_explicit_zero_max_batch_size_keeps_full_shapes() -> None:
    config = complete_config({"max_batch_size": 0}, MLP_IO, name="m")
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (-1, 4)
    assert config.dynamic_batching is None


def test_full_shape_dims_without_max_batch_size_mean_unbatched() -> None:
    declared = {"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}]}
    config = complete_config(declared, MLP_IO, name="m")
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (-1, 4)


def test_declared_dims_may_narrow_variable_model_dims() -> None:
    io = _io({"x": (-1, -1)}, {"y": (-1, -1)})
    declared = parse_pbtxt("max_batch_size: 2 input { name: 'x' data_type: TYPE_FP32 dims: 7 }")
    config = complete_config(declared, io, name="m")
    assert config.inputs[0].dims == (7,)
    assert config.outputs[0].dims == (-1,)


def test_reshape_is_checked_instead_of_dims() -> None:
    io = _io({"x": (-1, 2, 2)}, {"y": (-1, 4)})
    declared = parse_pbtxt(
        "max_batch_size: 2 "
        "input { name: 'x' data_type: TYPE_FP32 dims: 4 reshape { shape: [2, 2] } }"
    )
    config = complete_config(declared, io, name="m")
    assert config.inputs[0].dims == (4,)
    assert config.inputs[0].reshape == (2, 2)


def test_complete_model_config_is_checked_and_kept() -> None:
    config = ModelConfig(
        name="m",
        max_batch_size=4,
        inputs=(TensorSpec("x", DataType.FP32, (4,)),),
        outputs=(TensorSpec("y", DataType.FP32, (3,)),),
    )
    completed = complete_config(config, MLP_IO, name="m")
    assert completed.inputs == config.inputs and completed.max_batch_size == 4
    assert completed.dynamic_batching is None
    with pytest.raises(InvalidModelConfig, match="does not match the model's folder name"):
        complete_config(config, MLP_IO, name="other")


def test_warmup_is_checked_against_completed_inputs() -> None:
    warmup = (
        "model_warmup { name: 'w' batch_size: 2 inputs { key: '%s' value { "
        "data_type: TYPE_FP32 dims: 4 zero_data: true } } }"
    )
    assert complete_config(parse_pbtxt(warmup % "x"), MLP_IO, name="m").model_warmup
    with pytest.raises(InvalidModelConfig, match="names input 'z'"):
        complete_config(parse_pbtxt(warmup % "z"), MLP_IO, name="m")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "input { name: 'pixels' }",
            r"input 'pixels' is not an input of the model; the model's inputs are \['x'\]",
        ),
        (
            "output { name: 'y' data_type: TYPE_INT32 }",
            "data_type TYPE_INT32 contradicts the model's TYPE_FP32",
        ),
        (
            "max_batch_size: 4 input { name: 'x' data_type: TYPE_FP32 dims: [ 5 ] }",
            r"input 'x': dims \[5\] contradict the model's shape \[-1, 4\] "
            r"\(dimension 0 is 5 in the config, 4 in the model\)",
        ),
        (
            "max_batch_size: 4 input { name: 'x' data_type: TYPE_FP32 dims: [ -1, 4 ] }",
            r"rank 2 vs 1; with max_batch_size > 0, dims leave out the leading batch dimension",
        ),
        (
            "max_batch_size: 0 output { name: 'y' data_type: TYPE_FP32 dims: [ -1, -1 ] }",
            r"dimension 1 is -1 in the config, 3 in the model",
        ),
        (
            "max_batch_size: 4 input { name: 'x' reshape { shape: [ 4 ] } }",
            "has a reshape but no dims",
        ),
        (
            "dynamic_batching { preferred_batch_size: 128 }",
            "preferred_batch_size 128 exceeds max_batch_size 4",
        ),
    ],
)
def test_contradictions(config: str, message: str) -> None:
    with pytest.raises(InvalidModelConfig, match=message):
        complete_config(parse_pbtxt(config), MLP_IO, name="m")


def test_max_batch_size_needs_a_variable_leading_dimension(
    describe: Any, identity_model: Any
) -> None:
    model = identity_model([("x", F32, [1, 4])], [("y", F32, [1, 4])])
    with pytest.raises(
        InvalidModelConfig,
        match=r"max_batch_size 8 needs a variable leading \(batch\) dimension .* input 'x' has "
        r"shape \[1, 4\]; set max_batch_size: 0",
    ):
        complete_config({"max_batch_size": 8}, describe(model), name="m")
    scalar = _io({"s": ()}, {"t": ()})
    with pytest.raises(InvalidModelConfig, match=r"input 's' has shape \[\]"):
        complete_config({"max_batch_size": 1}, scalar, name="m")


def test_completed_config_equals_the_declared_one() -> None:
    text = """
    max_batch_size: 16
    input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
    output { name: "y" data_type: TYPE_FP32 dims: [ 3 ] }
    dynamic_batching { }
    """
    declared = config_from_dict(parse_pbtxt(text), name="m")
    assert complete_config(parse_pbtxt(text), MLP_IO, name="m") == declared


def test_unranked_tensor_takes_the_config_dims() -> None:
    """An ONNX input without a declared rank serves with the dims its config gives."""
    io = BackendIO(
        inputs=(TensorSpec("x", DataType.FP32, ()),),
        outputs=(TensorSpec("y", DataType.FP32, (-1, 3)),),
        unranked=frozenset({"x"}),
    )
    # Unranked, the model cannot be batched on its own (Triton's autocomplete sees no dims).
    config = complete_config({"input": [{"name": "x", "dims": [-1, 3]}]}, io, name="m")
    assert config.max_batch_size == 0
    assert config.inputs == (TensorSpec("x", DataType.FP32, (-1, 3)),)
    # With max_batch_size the config's dims leave out the batch dimension, as always.
    batched = complete_config(
        {"max_batch_size": 8, "input": [{"name": "x", "dims": [3]}]}, io, name="m"
    )
    assert batched.inputs == (TensorSpec("x", DataType.FP32, (3,)),)


def test_unranked_tensor_without_config_dims_is_a_config_error() -> None:
    io = BackendIO(
        inputs=(TensorSpec("x", DataType.FP32, ()),),
        outputs=(TensorSpec("y", DataType.FP32, (-1, 3)),),
        unranked=frozenset({"x"}),
    )
    with pytest.raises(InvalidModelConfig, match="no declared rank"):
        complete_config(None, io, name="m")
