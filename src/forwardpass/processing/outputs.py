"""Output interpretation: a chain of steps from one model output (or input) to one answer.

Steps, applied in order along the last axis:

- ``softmax``, ``sigmoid``, ``l2_normalize``: FP32, same shape;
- ``mean_pool``: ``{mean_pool: MASK_INPUT}`` averages token vectors [N,S,D] → [N,D] where the
  model input MASK_INPUT (an attention mask [N,S]) is 1;
- ``argmax``: INT64 index per row;
- ``label``: the label (labels file) of the argmax, BYTES;
- ``{topk: K}``: the K best as BYTES ``"score:index[:label]"`` (Triton's classification form);
- ``{threshold: T}``: BOOL, value > T;
- ``{exclude: {table: FILE, by: ROW_INPUT}}``: FP32, the entries a table beside the model lists
  for each row set to -inf, so later steps never pick them (a recommender's "films this user
  has rated"). FILE is an ``.npz`` holding a CSR table, ``indptr`` [R+1] and ``indices``: row r
  excludes ``indices[indptr[r]:indptr[r+1]]``; ROW_INPUT is the model input (INT, [N,1]) that
  gives each request's row;
- ``{top_labels: K}`` / ``{top_values: K}`` / ``{top_indices: K}``: the K best along the last
  axis, best first, as their labels (BYTES; the index where no label), their values (FP32) or
  their indices (INT64); two outputs from one source with the same K agree entry by entry
  (ties go to the lower index);
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
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import TensorSpec
from forwardpass.processing.base import OutputProcessor
from forwardpass.processing.decoding import CtcGreedy, Nms

__all__ = ["Exclusions", "OutputChain", "top_order", "topk_strings"]


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


def top_order(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest along the last axis, best first, ties to the lower index
    (``k`` capped at the axis size)."""
    k = min(k, x.shape[-1])
    if k < x.shape[-1]:
        # Partition first: a top-10 of thousands need not sort them all. A stable sort of
        # the candidates keeps the tie order; candidates tied with the k-th are all kept.
        kth = -np.partition(-x, k - 1, axis=-1)[..., k - 1 : k]
        candidates = x >= kth
        masked = np.where(candidates, x, -np.inf)
        return np.argsort(-masked, axis=-1, kind="stable")[..., :k]
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


class Exclusions:
    """A CSR table of per-row excluded indices, read from an ``.npz`` beside the model."""

    def __init__(
        self,
        arg: Any,
        model_inputs: Mapping[str, TensorSpec],
        model_dir: Path | None,
        where: str,
        width: int,
    ) -> None:
        if not isinstance(arg, Mapping) or set(arg) != {"table", "by"}:
            raise InvalidModelConfig(f"{where}: exclude takes {{table: FILE, by: INPUT}}")
        by = model_inputs.get(str(arg["by"]))
        if by is None or by.datatype not in _ROW_TYPES:
            raise InvalidModelConfig(
                f"{where}: exclude's 'by' must name an integer model input, got {arg['by']!r}"
            )
        if model_dir is None:
            raise InvalidModelConfig(f"{where}: exclude needs the model folder for its table")
        path = model_dir / str(arg["table"])
        if not path.resolve().is_relative_to(model_dir.resolve()) or not path.is_file():
            raise InvalidModelConfig(f"{where}: exclude table {arg['table']} is missing")
        try:
            with np.load(path, allow_pickle=False) as table:
                indptr = np.asarray(table["indptr"], dtype=np.int64)
                indices = np.asarray(table["indices"], dtype=np.int64)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidModelConfig(f"{where}: bad exclude table {path.name}: {exc}") from None
        if (
            indptr.ndim != 1
            or indptr.size < 1
            or indptr[0] != 0
            or np.any(np.diff(indptr) < 0)
            or indptr[-1] != indices.size
        ):
            raise InvalidModelConfig(f"{where}: {path.name} is not a CSR table (indptr)")
        if indices.size and (indices.min() < 0 or (width > 0 and indices.max() >= width)):
            raise InvalidModelConfig(
                f"{where}: {path.name} excludes indices outside 0..{width - 1}"
            )
        self.by = by.name
        self.indptr = indptr
        self.indices = indices

    def __call__(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = rows.reshape(-1)
        flat = np.array(x, dtype=np.float32).reshape(-1, x.shape[-1])
        if rows.size != flat.shape[0]:
            raise InvalidArgument(
                f"exclude: {rows.size} rows in {self.by!r} for {flat.shape[0]} score rows"
            )
        count = self.indptr.size - 1
        for r, row in enumerate(rows):
            row = int(row)
            if not 0 <= row < count:
                raise InvalidArgument(
                    f"exclude: row {row} of {self.by!r} is outside the table (0..{count - 1})"
                )
            flat[r, self.indices[self.indptr[row] : self.indptr[row + 1]]] = -np.inf
        return flat.reshape(x.shape)


_ROW_TYPES = (DataType.INT32, DataType.INT64, DataType.UINT32, DataType.UINT64)
_TOP = ("top_labels", "top_values", "top_indices")


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
            elif kind == "exclude":
                arg = Exclusions(arg, model_inputs, model_dir, where, dims[-1] if dims else -1)
                sources.append(arg.by)
                datatype = DataType.FP32
            elif kind in _TOP:
                if not isinstance(arg, int) or isinstance(arg, bool) or arg < 1:
                    raise InvalidModelConfig(f"{where}: {kind} needs a positive integer")
                if dims and dims[-1] > 0:
                    arg = min(arg, dims[-1])
                dims = dims[:-1] + (arg,)
                datatype = {
                    "top_labels": DataType.BYTES,
                    "top_values": DataType.FP32,
                    "top_indices": DataType.INT64,
                }[kind]
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
                    "argmax, label, topk, top_labels, top_values, top_indices, exclude, "
                    "threshold, ctc_greedy, nms)"
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

    def _top_labels(self, order: np.ndarray) -> np.ndarray:
        names = self.labels
        flat = np.empty(order.size, dtype=object)
        flat[:] = [
            names[i].encode() if i < len(names) else str(i).encode()
            for i in order.reshape(-1).tolist()
        ]
        return flat.reshape(order.shape)

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
            elif kind == "exclude":
                x = arg(x, arrays[arg.by])
            elif kind in _TOP:
                order = top_order(x, int(arg))
                if kind == "top_indices":
                    x = order.astype(np.int64)
                elif kind == "top_values":
                    x = np.take_along_axis(x, order, axis=-1).astype(np.float32)
                else:
                    x = self._top_labels(order)
            elif kind == "threshold":
                x = x > float(arg)
            elif kind == "ctc_greedy":
                x = arg(x)[0]
            elif kind == "nms":
                x = arg(x)
        return {self.name: x}
