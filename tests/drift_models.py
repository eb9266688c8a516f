"""A small tabular classifier with a ``monitoring.drift`` section, for the drift tests.

``scored``: three named FP32 columns ``a, b, c`` (tabular processing) → model input ``x``
[N, 3] → ``probabilities`` [N, 2] = softmax(x @ W) and ``label`` (arg-max, INT64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COLUMNS = ("a", "b", "c")
WEIGHTS = np.array([[1.0, -1.0], [0.5, 0.2], [-0.3, 0.3]], dtype=np.float32)


def scored_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0),
        ],
        "scored",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[numpy_helper.from_array(WEIGHTS, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _pbtxt_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid pbtxt string literal


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: {_pbtxt_string(value)} }} }}\n'


def write_scored(
    root: Path,
    name: str = "scored",
    monitoring: dict[str, Any] | str | None = None,
    *,
    max_batch_size: int = 8,
    response_cache: bool = False,
) -> Path:
    """Write the model; ``monitoring`` goes in as the parameter (a dict is JSON-encoded)."""
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(scored_model(), str(folder / "1" / "model.onnx"))
    processing = {"inputs": [{"kind": "tabular", "to": "x", "columns": list(COLUMNS)}]}
    parameters = _parameter("processing", json.dumps(processing))
    if monitoring is not None:
        text = monitoring if isinstance(monitoring, str) else json.dumps(monitoring)
        parameters += _parameter("monitoring", text)
    config = f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input {{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }}
output {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] }}
output {{ name: "label" data_type: TYPE_INT64 dims: [ ] }}
dynamic_batching {{ }}
{"response_cache { enable: true }" if response_cache else ""}
{parameters}"""
    (folder / "config.pbtxt").write_text(config)
    return folder


def reference_rows(n: int = 400, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
