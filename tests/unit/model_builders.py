"""Model repositories for the engine, HTTP app and CLI tests (imported by their conftest).

``repo`` is a repository with small real ONNX models (made with ``onnx.helper``) and models on
the ``null`` backend, which echoes input ``i`` to output ``i`` and can be told to sleep or fail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: What the ``add`` model adds to its input.
ADD_BIAS = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def add_model() -> onnx.ModelProto:
    """``y = x + [1, 2, 3]`` with x, y of shape [batch, 3]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "B"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(ADD_BIAS, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def square_model() -> onnx.ModelProto:
    """``y = x * x`` with x, y of shape [batch, 2, 2] (the model sees 2x2 matrices)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_model(
    root: Path,
    name: str,
    *,
    config: str | None = None,
    model: onnx.ModelProto | None = None,
    versions: tuple[int, ...] = (1,),
    files: dict[str, str] | None = None,
) -> Path:
    """Create ``root/name`` with version folders (holding ``model``), a config and files."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for version in versions:
        (folder / str(version)).mkdir(exist_ok=True)
        if model is not None:
            onnx.save(model, str(folder / str(version) / "model.onnx"))
    if config is not None:
        (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    for relative, text in (files or {}).items():
        (folder / relative).write_text(text, encoding="utf-8")
    return folder


ADD_CONFIG = """
name: "add"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
dynamic_batching { }
"""

SQUARE_CONFIG = """
name: "square"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
"""


def null_config(name: str, *, max_batch_size: int = 4, extra: str = "") -> str:
    """A null-backend model: INT32 input ``a`` [2] echoed to output ``b``."""
    return f"""
name: "{name}"
backend: "null"
max_batch_size: {max_batch_size}
input [ {{ name: "a" data_type: TYPE_INT32 dims: [ 2 ] }} ]
output [ {{ name: "b" data_type: TYPE_INT32 dims: [ 2 ] }} ]
{extra}
"""


def build_repository(root: Path) -> Path:
    """``add`` (ONNX, labels), ``square`` (ONNX, reshape), ``echo`` (null, versions 1..3 all
    served) and ``broken`` (a config that does not parse)."""
    root.mkdir(parents=True, exist_ok=True)
    write_model(
        root, "add", config=ADD_CONFIG, model=add_model(), files={"labels.txt": "ant\nbee\ncat\n"}
    )
    write_model(root, "square", config=SQUARE_CONFIG, model=square_model())
    write_model(
        root,
        "echo",
        config=null_config("echo", extra="version_policy: { all: { } }"),
        versions=(1, 2, 3),
    )
    write_model(root, "broken", config="name: broken\nmax_batch_size: [[[\n", versions=(1,))
    return root


def run_with_engine(root: Path, body: Callable[[Any], Awaitable[Any]], **config: Any) -> Any:
    """Start an :class:`Engine` on ``root`` in a fresh event loop, run ``body(engine)``, stop."""
    import asyncio

    from forwardpass.config import ServerConfig
    from forwardpass.engine import Engine
    from forwardpass.repository import ModelRepository

    # Explicit model control, every model loaded at start: the repository API is open, as
    # the tests of loading and unloading need (pass model_control_mode/load_models to change).
    config.setdefault("model_control_mode", "explicit")
    if config["model_control_mode"] == "explicit":
        config.setdefault("load_models", ("*",))

    async def main() -> Any:
        engine = Engine(
            ModelRepository(root),
            ServerConfig(model_repository=root, shutdown_grace_s=5.0, **config),
        )
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())
