"""The engine behaves as Triton where Triton's QA suites look: reshapes with variable dims
(L0_infer_reshape), zero-size tensors (L0_infer_zero), all-optional inputs
(L0_input_validation) and unknown model/version messages (L0_http, L0_infer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_builders import run_with_engine, write_model
from onnx import TensorProto, helper, numpy_helper

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import NotFound, Unavailable
from forwardpass.types import InferRequest, Tensor


def _identity(shape: list[Any], op: str = "Identity") -> Any:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _infer(root: Path, request: InferRequest) -> Any:
    async def body(engine: Engine) -> Any:
        return await engine.infer(request)

    return run_with_engine(root, body)


def _x(array: np.ndarray) -> Tensor:
    return Tensor("x", DataType.FP32, array.astype(np.float32))


# ------------------------------------------------------------------------------------ reshape

RESHAPE_CONFIG = """
name: "reshape"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 4, -1, 6 ]
          reshape: { shape: [ 8, -1, 1, 6 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 4, -1, 6 ]
           reshape: { shape: [ 8, -1, 1, 6 ] } } ]
"""


def test_variable_reshape_maps_each_variable_dim_both_ways(tmp_path: Path) -> None:
    """L0_infer_reshape: dims [2,4,-1,6] reshaped [8,-1,1,6]; the -1 of the reshape takes the
    size of the -1 of dims going in, and the -1 of dims takes it back coming out."""
    write_model(
        tmp_path,
        "reshape",
        config=RESHAPE_CONFIG,
        model=_identity(["batch", 8, "n", 1, 6]),
    )
    x = np.arange(2 * 2 * 4 * 5 * 6).reshape(2, 2, 4, 5, 6)
    response = _infer(tmp_path, InferRequest("reshape", [_x(x)]))
    [y] = response.outputs
    assert y.shape == (2, 2, 4, 5, 6)
    np.testing.assert_array_equal(y.data, x)


@pytest.mark.parametrize(
    ("dims", "reshape", "words"),
    [
        ("[ -1, -1 ]", "[ -1 ]", "different number of variable-size dimensions"),
        ("[ 2, -1 ]", "[ -1, 3 ]", "different size for dims and reshape"),
    ],
)
def test_reshape_variable_dims_must_pair_up(
    tmp_path: Path, dims: str, reshape: str, words: str
) -> None:
    """Triton's config check: as many -1 in dims as in reshape, equal sizes between them."""
    from forwardpass.errors import InvalidModelConfig
    from forwardpass.repository import ModelRepository

    config = f"""
name: "reshape"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: {dims} reshape: {{ shape: {reshape} }} }} ]
"""
    rank = reshape.count(",") + 1
    write_model(tmp_path, "reshape", config=config, model=_identity([f"d{i}" for i in range(rank)]))
    with pytest.raises(InvalidModelConfig, match=words):
        ModelRepository(tmp_path).read("reshape")


# --------------------------------------------------------------------------------- zero rows

IDENTITY_CONFIG = """
name: "identity"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]
"""


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (3, 0)])
def test_zero_size_input_of_a_non_batching_model_runs_the_model(
    tmp_path: Path, shape: tuple[int, int]
) -> None:
    """L0_infer_zero: Identity answers exactly the shape it was given, [0,0] included."""
    write_model(tmp_path, "identity", config=IDENTITY_CONFIG, model=_identity(["a", "b"]))
    response = _infer(tmp_path, InferRequest("identity", [_x(np.zeros(shape))]))
    assert response.outputs[0].shape == shape


def test_zero_rows_that_the_model_cannot_run_still_answer_zero_rows(tmp_path: Path) -> None:
    """An ensemble step after a detector that found nothing: the network (a Reshape to
    [0, -1] here) cannot run zero rows, so the engine answers zero rows itself."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        initializer=[numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    config = """
name: "flatten"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 2, 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 6 ] } ]
"""
    write_model(tmp_path, "flatten", config=config, model=model)
    response = _infer(tmp_path, InferRequest("flatten", [_x(np.zeros((0, 2, 3)))]))
    assert response.outputs[0].shape == (0, 6)


# ------------------------------------------------------------------------- optional inputs


def test_a_model_whose_inputs_are_all_optional_runs_without_inputs(tmp_path: Path) -> None:
    """L0_input_validation test_input_validation_all_optional: no inputs at all runs."""
    config = """
name: "optional"
backend: "null"
max_batch_size: 0
input [ { name: "a" data_type: TYPE_INT32 dims: [ 2 ] optional: true } ]
output [ { name: "b" data_type: TYPE_INT32 dims: [ 2 ] } ]
"""
    write_model(tmp_path, "optional", config=config)

    async def body(engine: Engine) -> None:
        response = await engine.infer(InferRequest("optional", []))
        assert [o.name for o in response.outputs] == ["b"]
        given = Tensor("a", DataType.INT32, np.array([5, 6], dtype=np.int32))
        response = await engine.infer(InferRequest("optional", [given]))
        np.testing.assert_array_equal(response.outputs[0].data, [5, 6])

    run_with_engine(tmp_path, body)


# ------------------------------------------------------------------------- unknown models


def test_unknown_models_and_versions_answer_triton_text(tmp_path: Path) -> None:
    write_model(tmp_path, "identity", config=IDENTITY_CONFIG, model=_identity(["a", "b"]))
    x = _x(np.zeros((1, 1)))

    async def body(engine: Engine) -> None:
        with pytest.raises(NotFound) as info:
            await engine.infer(InferRequest("ghost", [x]))
        assert info.value.message.startswith("Request for unknown model: 'ghost' is not found")
        with pytest.raises(NotFound) as info:
            await engine.infer(InferRequest("identity", [x], model_version="3"))
        assert info.value.message.startswith(
            "Request for unknown model: 'identity' version 3 is not found"
        )
        await engine.unload("identity")
        with pytest.raises(Unavailable) as unavailable:
            await engine.infer(InferRequest("identity", [x]))
        assert unavailable.value.message.startswith(
            "Request for unknown model: 'identity' has no available versions"
        )

    run_with_engine(tmp_path, body)


# ----------------------------------------------------------------------- unranked ONNX input


def test_onnx_input_of_unknown_rank_serves_with_the_config_dims(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "unranked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],  # no shape at all
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    config = """
name: "unranked"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
"""
    write_model(tmp_path, "unranked", config=config, model=model)
    x = np.arange(6).reshape(2, 3)
    response = _infer(tmp_path, InferRequest("unranked", [_x(x)]))
    np.testing.assert_array_equal(response.outputs[0].data, x)
