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


#: The table the ``gather`` model looks its indices up in: ``y = TABLE[x]``.
GATHER_TABLE = np.arange(10, dtype=np.float32) * 10


def gather_model() -> onnx.ModelProto:
    """``y = TABLE[x]`` with x INT64 [batch, 1]: an index outside 0..9 fails inside the graph."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["T", "x"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(GATHER_TABLE, "T")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def text_model() -> onnx.ModelProto:
    """``y = x`` on a string tensor [batch, 1] (onnxruntime takes UTF-8 text only)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "text",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ragged_sum_model() -> onnx.ModelProto:
    """Per-request sums of a ragged input, and the input doubled.

    ``x`` is the requests' elements concatenated flat (FP32 [n]); ``end`` (INT64 [requests],
    a ``BATCH_ACCUMULATED_ELEMENT_COUNT`` batch input) is where each request's elements end.
    ``sum`` [requests, 1] is each request's total, ``twice`` [n] is ``2 * x`` (for a
    ``BATCH_SCATTER_WITH_INPUT_SHAPE`` batch output).
    """
    const = helper.make_node
    nodes = [
        const("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        const("Constant", [], ["zero_i"], value=numpy_helper.from_array(np.zeros(1, np.int64))),
        const("Constant", [], ["axis0"], value=numpy_helper.from_array(np.array(0, np.int64))),
        const("Constant", [], ["starts"], value=numpy_helper.from_array(np.array([0], np.int64))),
        const("Constant", [], ["ends"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        const("Constant", [], ["column"], value=numpy_helper.from_array(np.array([-1, 1]))),
        const("Constant", [], ["two"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
        # running[i] = x[0] + ... + x[i-1], with running[0] = 0
        const("Concat", ["zero", "x"], ["padded"], axis=0),
        const("CumSum", ["padded", "axis0"], ["running"]),
        # starts of each request = [0, end[0], ..., end[-2]]
        const("Slice", ["end", "starts", "ends"], ["head"]),
        const("Concat", ["zero_i", "head"], ["begin"], axis=0),
        const("Gather", ["running", "end"], ["upper"], axis=0),
        const("Gather", ["running", "begin"], ["lower"], axis=0),
        const("Sub", ["upper", "lower"], ["flat_sum"]),
        const("Reshape", ["flat_sum", "column"], ["sum"]),
        const("Mul", ["x", "two"], ["twice"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ragged_sum",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("end", TensorProto.INT64, ["requests"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["requests", 1]),
            helper.make_tensor_value_info("twice", TensorProto.FLOAT, ["n"]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


#: ``ragged_sum_model`` served with a ragged ``x``, the ``end`` batch input and ``twice`` scattered.
RAGGED_CONFIG = """
name: "ragged"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
batch_input [
  {
    kind: BATCH_ACCUMULATED_ELEMENT_COUNT
    target_name: "end"
    data_type: TYPE_INT64
    source_input: "x"
  }
]
output [
  { name: "sum" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "twice" data_type: TYPE_FP32 dims: [ -1 ] }
]
batch_output [
  { kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "twice" source_input: "x" }
]
dynamic_batching { preferred_batch_size: [ 5 ] max_queue_delay_microseconds: 5000000 }
"""
TEXT_WORDS = "the quick brown fox jumps over lazy dog near quiet river bank".split()


def write_text_model(root: Path, name: str = "words") -> Path:
    """A model with declared text processing (a word-level tokenizer built here).

    score[n] = mean token id of row n: a stand-in for a text model, with input_ids and
    attention_mask inputs as Hugging Face exports have.
    """
    import json

    from onnx import TensorProto, helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["n", "t"])
           for n in ("input_ids", "attention_mask")]  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["ids", "mask"], ["kept"]),
            helper.make_node("ReduceMean", ["kept"], ["score"], axes=[1], keepdims=1),
        ],
        "text",
        ids,
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    processing = json.dumps(json.dumps({"inputs": [{"name": "text", "kind": "text"}]}))
    config = (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
        '        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
        'output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        f'parameters {{ key: "processing" value: {{ string_value: {processing} }} }}\n'
    )
    folder = write_model(root, name, config=config, model=model)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(TEXT_WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder
