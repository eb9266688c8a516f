"""Output interpretation: a chain of steps from one model output (or input) to one answer.

Steps, applied in order along the last axis:

- ``softmax``, ``sigmoid``, ``l2_normalize``: FP32, same shape;
- ``mean_pool``: ``{mean_pool: MASK_INPUT}`` averages token vectors [N,S,D] → [N,D] where the
  model input MASK_INPUT (an attention mask [N,S]) is 1;
- ``argmax``: INT64 index per row;
- ``label``: the label (labels file) of the argmax, BYTES;
- ``{topk: K}``: the K best as BYTES ``"score:index[:label]"`` (Triton's classification form);
- ``{threshold: T}``: BOOL, value > T;
- ``{ctc_greedy: {dictionary: FILE, ...}}``: CTC greedy decoding of [N,T,C] into BYTES text
  [N,1] (options in :mod:`forwardpass.processing.decoding`);
- ``{nms: {iou: 0.45, score: 0.25, ...}}``: YOLO-style boxes [N,boxes,4+classes] through
  non-maximum suppression into FP32 [N,max_detections,6] (x1, y1, x2, y2, score, class).

The two decoders end a chain. Their ``decode:`` form (see :mod:`forwardpass.processing.spec`)
also gives the CTC scores or the detections' labels as a second output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import TensorSpec
from forwardpass.processing.base import OutputProcessor
from forwardpass.processing.decoding import CtcGreedy, Nms

__all__ = ["OutputChain", "topk_strings"]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float32) - x.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def _l2(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def topk_strings(x: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """The ``k`` best of the last axis as BYTES ``"score:index[:label]"`` (Triton's
    classification form), shape ``x.shape[:-1] + (k,)``; ``k`` is capped at the axis size."""
    k = min(k, x.shape[-1])
    flat = x.reshape(-1, x.shape[-1])
    order = np.argsort(-flat, axis=-1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for r in range(order.shape[0]):
        for c in range(k):
            i = int(order[r, c])
            text = f"{float(flat[r, i]):.6f}:{i}"
            if i < len(labels):
                text += ":" + labels[i]
            out[r, c] = text.encode()
    return out.reshape(x.shape[:-1] + (k,))


class OutputChain(OutputProcessor):
    """``from`` a model output (or input, for masks) through ``steps`` to output ``name``."""

    def __init__(
        self,
        name: str,
        source: TensorSpec,
        steps: Sequence[Any],
        labels: Sequence[str],
        model_inputs: Mapping[str, TensorSpec],
        model_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.source = source.name
        self.labels = tuple(labels)
        self.steps: list[tuple[str, Any]] = []
        sources = [source.name]
        dims = source.dims
        datatype = source.datatype
        for i, raw in enumerate(steps):
            where = f"output {name!r} step {i + 1}"
            if isinstance(raw, str):
                kind, arg = raw, None
            elif isinstance(raw, Mapping) and len(raw) == 1:
                ((kind, arg),) = raw.items()
            else:
                raise InvalidModelConfig(
                    f"{where}: a step is a name or a one-key mapping, got {raw!r}"
                )
            if datatype in (DataType.BYTES, DataType.BOOL):
                raise InvalidModelConfig(
                    f"{where}: {kind} cannot follow a step giving {datatype.value}"
                )
            if kind in ("softmax", "sigmoid", "l2_normalize"):
                datatype = DataType.FP32
            elif kind == "mean_pool":
                mask = model_inputs.get(str(arg))
                if mask is None:
                    raise InvalidModelConfig(
                        f"{where}: mean_pool needs a model input mask, got {arg!r}"
                    )
                sources.append(mask.name)
                dims = dims[:-2] + dims[-1:] if len(dims) >= 2 else dims
                datatype = DataType.FP32
            elif kind == "argmax":
                dims, datatype = (dims[:-1] or (1,)), DataType.INT64
            elif kind == "label":
                if not labels:
                    raise InvalidModelConfig(
                        f"{where}: label needs a labels file for {source.name!r}"
                    )
                dims, datatype = (dims[:-1] or (1,)), DataType.BYTES
            elif kind == "topk":
                if not isinstance(arg, int) or arg < 1:
                    raise InvalidModelConfig(f"{where}: topk needs a positive integer")
                dims, datatype = dims[:-1] + (arg,), DataType.BYTES
            elif kind == "threshold":
                if not isinstance(arg, int | float):
                    raise InvalidModelConfig(f"{where}: threshold needs a number")
                datatype = DataType.BOOL
            elif kind in ("ctc_greedy", "nms"):
                if i != len(steps) - 1:
                    raise InvalidModelConfig(f"{where}: {kind} must be the last step")
                arg = self._decoder(kind, arg, source, dims, model_dir, where)
                if isinstance(arg, CtcGreedy):
                    dims, datatype = (1,), DataType.BYTES
                else:
                    dims, datatype = (arg.max_detections, 6), DataType.FP32
            else:
                raise InvalidModelConfig(
                    f"{where}: unknown step {kind!r} (softmax, sigmoid, l2_normalize, mean_pool, "
                    "argmax, label, topk, threshold, ctc_greedy, nms)"
                )
            self.steps.append((kind, arg))
        self.sources = tuple(sources)
        self.outputs = (TensorSpec(name=name, datatype=datatype, dims=dims),)

    @staticmethod
    def _decoder(
        kind: str,
        arg: Any,
        source: TensorSpec,
        dims: tuple[int, ...],
        model_dir: Path | None,
        where: str,
    ) -> CtcGreedy | Nms:
        """The decoder a ``ctc_greedy`` / ``nms`` step runs, on the dims the chain reached."""
        if arg is None:
            arg = {}
        if not isinstance(arg, Mapping):
            raise InvalidModelConfig(f"{where}: {kind} takes a mapping of options")
        here = TensorSpec(name=source.name, datatype=source.datatype, dims=dims)
        if kind == "ctc_greedy":
            if "scores" in arg:
                raise InvalidModelConfig(
                    f"{where}: scores need the decode: ctc_greedy form (a second output)"
                )
            return CtcGreedy(here, arg, model_dir, where)
        if "labels" in arg:
            raise InvalidModelConfig(f"{where}: labels need the decode: nms form")
        return Nms(here, arg, where)

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays[self.source]
        for kind, arg in self.steps:
            if kind == "softmax":
                x = _softmax(x)
            elif kind == "sigmoid":
                x = _sigmoid(x)
            elif kind == "l2_normalize":
                x = _l2(x)
            elif kind == "mean_pool":
                mask = arrays[str(arg)].astype(np.float32)[..., None]
                x = (x * mask).sum(axis=-2) / np.maximum(mask.sum(axis=-2), 1e-9)
                x = x.astype(np.float32)
            elif kind == "argmax":
                x = np.argmax(x, axis=-1).astype(np.int64)
                x = x.reshape(x.shape + (1,)) if x.ndim < 2 else x
            elif kind == "label":
                index = np.argmax(x, axis=-1)
                flat = np.empty(index.size, dtype=object)
                flat[:] = [
                    self.labels[int(i)].encode()
                    if int(i) < len(self.labels)
                    else str(int(i)).encode()
                    for i in index.reshape(-1)
                ]
                x = (
                    flat.reshape(index.shape + (1,))
                    if index.ndim < 2
                    else flat.reshape(index.shape)
                )
            elif kind == "topk":
                x = topk_strings(x, int(arg), self.labels)
            elif kind == "threshold":
                x = x > float(arg)
            elif kind == "ctc_greedy":
                x = arg(x)[0]
            elif kind == "nms":
                x = arg(x)
        return {self.name: x}
