"""Model repositories for the integration tests: small ONNX graphs and config.pbtxt texts.

Every model is built here with ``onnx.helper`` so its expected output is a one-line NumPy
expression; the tests compare the server's answers with that expression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Protocol datatype → (ONNX element type, NumPy dtype), every type the model "alltypes" echoes.
DATATYPES: dict[str, tuple[int, type]] = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),
}

#: The MLP's weights: y = relu(x @ W + b), x [batch, 4] → y [batch, 3].
MLP_W = np.array(
    [[0.5, -1.0, 0.25], [1.5, 0.75, -0.5], [-0.25, 2.0, 1.0], [1.0, -0.5, 0.125]], np.float32
)
MLP_B = np.array([0.1, -0.2, 0.3], np.float32)
MLP_LABELS = ("cat", "dog", "bird")


def mlp_expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float32) @ MLP_W + MLP_B, 0).astype(np.float32)


def _save(graph: onnx.GraphProto, opset: int = 17) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp_onnx() -> bytes:
    """x FP32 [batch, 4] → y FP32 [batch, 3]; dynamic batch."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["z"]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(MLP_W, "W"), numpy_helper.from_array(MLP_B, "b")],
    )
    return _save(graph)


def alltypes_onnx(skip: tuple[str, ...] = ()) -> bytes:
    """For every datatype T (but ``skip``): IN_T [batch, 3] → Identity → OUT_T; plus
    OUT_CAST = Cast(IN_INT32, FP64)."""
    types = {t: v for t, v in DATATYPES.items() if t not in skip}
    nodes = [helper.make_node("Identity", [f"IN_{t}"], [f"OUT_{t}"]) for t in types]
    nodes.append(helper.make_node("Cast", ["IN_INT32"], ["OUT_CAST"], to=TensorProto.DOUBLE))
    inputs = [
        helper.make_tensor_value_info(f"IN_{t}", onnx_type, ["batch", 3])
        for t, (onnx_type, _) in types.items()
    ]
    outputs = [
        helper.make_tensor_value_info(f"OUT_{t}", onnx_type, ["batch", 3])
        for t, (onnx_type, _) in types.items()
    ]
    outputs.append(helper.make_tensor_value_info("OUT_CAST", TensorProto.DOUBLE, ["batch", 3]))
    return _save(helper.make_graph(nodes, "alltypes", inputs, outputs))


def text_onnx() -> bytes:
    """text BYTES [batch, n] → same (a string Identity)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "text",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", "n"])],
    )
    return _save(graph)


def add_onnx(constant: float, shape: list[int | str]) -> bytes:
    """x FP32 ``shape`` → y = x + constant."""
    c = numpy_helper.from_array(np.array(constant, np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[c],
    )
    return _save(graph)


MLP_CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

VERSIONED_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
version_policy { all { } }
"""


def null_config(
    name: str,
    *,
    datatype: str = "TYPE_FP32",
    dims: str = "[ 2 ]",
    max_batch_size: int = 0,
    delay_ms: int = 0,
    fail_value: float | None = None,
    max_queue_size: int | None = None,
) -> str:
    """A null-backend model: output "out" echoes input "in"."""
    lines = [
        f'name: "{name}"',
        'backend: "null"',
        f"max_batch_size: {max_batch_size}",
        f'input [ {{ name: "in" data_type: {datatype} dims: {dims} }} ]',
        f'output [ {{ name: "out" data_type: {datatype} dims: {dims} }} ]',
        f'parameters {{ key: "delay_ms" value: {{ string_value: "{delay_ms}" }} }}',
    ]
    if fail_value is not None:
        lines.append(
            f'parameters {{ key: "fail_value" value: {{ string_value: "{fail_value}" }} }}'
        )
    if max_queue_size is not None:
        lines.append(
            f"dynamic_batching {{ default_queue_policy {{ max_queue_size: {max_queue_size} }} }}"
        )
    return "\n".join(lines) + "\n"


def write_model(
    repository: Path,
    name: str,
    *,
    config: str | None = None,
    versions: dict[int, bytes] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write ``<repository>/<name>/`` with its config, version folders and extra text files.

    ``versions`` maps a version to its model.onnx bytes; a null model gets empty folders.
    """
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    for version, model in (versions or {1: b""}).items():
        (folder / str(version)).mkdir(exist_ok=True)
        if model:
            (folder / str(version) / "model.onnx").write_bytes(model)
    for relative, text in (files or {}).items():
        (folder / relative).write_text(text)
    return folder


def build_main_repository(root: Path) -> Path:
    """The repository most tests share: every model the client and bad-input tests need."""
    root.mkdir(parents=True, exist_ok=True)
    write_model(
        root,
        "mlp",
        config=MLP_CONFIG,
        versions={1: mlp_onnx()},
        files={"labels.txt": "\n".join(MLP_LABELS) + "\n"},
    )
    write_model(root, "alltypes", versions={1: alltypes_onnx()})  # auto-completed config
    # Every type gRPC's typed contents can carry (FP16 has no field).
    write_model(root, "alltypes_typed", versions={1: alltypes_onnx(skip=("FP16",))})
    # The batch-like axis is the second one, so the model cannot be batched along axis 0.
    write_model(root, "batch_second", versions={1: add_onnx(1.0, [3, "n"])})
    write_model(root, "scalar", versions={1: add_onnx(1.0, [])})
    write_model(root, "text", versions={1: text_onnx()})
    write_model(
        root,
        "versioned",
        config=VERSIONED_CONFIG,
        versions={1: add_onnx(1.0, ["batch", 2]), 2: add_onnx(2.0, ["batch", 2])},
    )
    write_model(root, "broken_onnx", versions={1: b"this is not an ONNX protobuf"})
    write_model(
        root,
        "broken_config",
        config='platform: "onnxruntime_onnx"\nmax_batch_size: [[ oops\n',
        versions={1: mlp_onnx()},
    )
    write_model(root, "echo_i32", config=null_config("echo_i32", datatype="TYPE_INT32"))
    write_model(
        root,
        "echo_bytes",
        config=null_config("echo_bytes", datatype="TYPE_STRING", dims="[ -1 ]"),
    )
    write_model(root, "echo_fp16", config=null_config("echo_fp16", datatype="TYPE_FP16"))
    # Variable dims: no implicit zero warm-up, so their delays do not slow the start.
    write_model(root, "slow", config=null_config("slow", dims="[ -1 ]", delay_ms=500))
    write_model(
        root,
        "tiny_queue",
        config=null_config("tiny_queue", dims="[ -1 ]", delay_ms=300, max_queue_size=1),
    )
    write_model(
        root, "failer", config=null_config("failer", dims="[ -1 ]", delay_ms=50, fail_value=-1)
    )
    return root
