"""Fold zero ``Pad`` nodes into the convolutions they feed, in an exported ONNX file.

Torch cannot pad a convolution unevenly, so a network exported with TF-style "same" padding
(EfficientNet's stride-2 convolutions: nothing above, one row below) comes back from
:func:`.torch_graph.export` as ``Pad → Conv``, the pads computed by a small chain of
constant ops. ONNX Runtime leaves those Pads alone and, around each, converts the activation
out of and back into its blocked (NCHWc) layout: on EfficientNet-Lite0 the re-exported,
unpruned network ran 12 % slower than the original, eating most of what pruning saved.
ONNX's Conv takes uneven pads itself, so :func:`fold_pads` moves them there:

1. ONNX Runtime's basic optimizations (constant folding; exact rewrites only) turn each
   chain into a constant;
2. a ``Pad`` in constant mode with a zero (or absent) value, padding only spatial axes,
   whose output feeds only Convs without ``auto_pad``, is removed and its pads added to each
   Conv's ``pads``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["fold_pads"]


def fold_pads(path: Path) -> int:
    """Rewrite the model at ``path`` with its foldable Pads folded; how many were folded."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    with tempfile.TemporaryDirectory(prefix="forwardpass-padfold-") as tmp:
        folded = os.path.join(tmp, "folded.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = folded
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(folded)
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    removed = []
    for node in model.graph.node:
        if node.op_type != "Pad" or node.output[0] in outputs:
            continue
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        pads = consts.get(node.input[1]) if len(node.input) > 1 else None
        value = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        users = consumers.get(node.output[0], [])
        if (
            mode != b"constant"
            or pads is None
            or (value is not None and np.any(value != 0))
            or (len(node.input) > 3 and node.input[3])  # explicit axes: leave it
            or not users
            or any(u.op_type != "Conv" or u.input[0] != node.output[0] for u in users)
            or any(
                a.name == "auto_pad" and a.s not in (b"", b"NOTSET")
                for u in users
                for a in u.attribute
            )
        ):
            continue
        rank = len(pads) // 2
        begin, end = [int(p) for p in pads[:rank]], [int(p) for p in pads[rank:]]
        if begin[:2] != [0, 0] or end[:2] != [0, 0] or min(begin + end) < 0:
            continue
        for user in users:
            old = next((list(a.ints) for a in user.attribute if a.name == "pads"), None)
            old = old or [0] * (2 * (rank - 2))
            spatial = rank - 2
            new = [old[i] + begin[2 + i] for i in range(spatial)]
            new += [old[spatial + i] + end[2 + i] for i in range(spatial)]
            kept = [a for a in user.attribute if a.name != "pads"]
            del user.attribute[:]
            user.attribute.extend([*kept, helper.make_attribute("pads", new)])
            user.input[0] = node.input[0]
        removed.append(node)
    for node in removed:
        model.graph.node.remove(node)
    if removed:
        onnx.save(model, str(path))
    return len(removed)
