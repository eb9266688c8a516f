"""Small ONNX models built with onnx.helper, and a helper to lay out a model repository."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

Shape = Sequence[int | str]
#: (name, ONNX element type, shape with "n" style names for symbolic dims)
TensorDecl = tuple[str, int, Shape]


def _identity_model(inputs: Sequence[TensorDecl], outputs: Sequence[TensorDecl]) -> onnx.ModelProto:
    """Output ``i`` = Identity(input ``i``): enough for the declared signature to be real."""
    nodes = [
        helper.make_node("Identity", [i[0]], [o[0]]) for i, o in zip(inputs, outputs, strict=True)
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mlp_model(features: int = 4, classes: int = 3) -> onnx.ModelProto:
    """y = relu(x @ W + b) with a symbolic batch dimension."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.random((features, classes), dtype=np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        initializer=[weights, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., Path]:
    """Create ``<repo>/<name>/`` with versions holding ``model``, a config and extra files."""
    repo = tmp_path / "models"
    repo.mkdir()

    def make(
        name: str,
        model: onnx.ModelProto | None = None,
        *,
        config: str | None = None,
        config_name: str = "config.pbtxt",
        versions: Sequence[int] = (1,),
        files: dict[str, str | bytes] | None = None,
    ) -> Path:
        folder = repo / name
        folder.mkdir(parents=True, exist_ok=True)
        for version in versions:
            (folder / str(version)).mkdir(exist_ok=True)
            if model is not None:
                save(model, folder / str(version) / "model.onnx")
        if config is not None:
            (folder / config_name).write_text(config, encoding="utf-8")
        for relative, content in (files or {}).items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        return repo

    return make


@pytest.fixture
def identity_model() -> Callable[..., onnx.ModelProto]:
    """Builder: ``identity_model(inputs, outputs)`` with (name, element type, shape) tuples."""
    return _identity_model


@pytest.fixture
def mlp_model() -> Callable[..., onnx.ModelProto]:
    """Builder: ``mlp_model(features=4, classes=3)``, input x [batch, 4] → output y [batch, 3]."""
    return _mlp_model
