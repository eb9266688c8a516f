"""Decoders for structured model outputs: CTC greedy text and YOLO-style box detections.

Each decoder is declared one of two ways. As the last step of an output chain it gives one
output::

    - {name: text, from: logits, steps: [{ctc_greedy: {dictionary: ppocr_keys_v1.txt}}]}
    - {name: detections, from: output0, steps: [{nms: {iou: 0.45, score: 0.25}}]}

As a ``decode:`` entry, with the same options beside ``name`` and ``from``, it may also give
a second output, named by ``scores`` (CTC) or ``labels`` (NMS)::

    - {name: text, from: logits, decode: ctc_greedy, dictionary: keys.txt, scores: confidence}
    - {name: detections, from: output0, decode: nms, iou: 0.45, labels: classes}

**ctc_greedy** reads [N, T, C] class scores (probabilities or logits): the best class per
step, repeats collapsed, the blank dropped, each class c ≠ blank mapped to character
c − ``offset`` of the dictionary. Options: ``dictionary`` (a file in the model folder, one
character per line, as PaddleOCR's ``ppocr_keys_v1.txt``) or ``alphabet`` (the characters
inline, as a string); ``blank`` (class index, default 0); ``offset`` (the class of the
dictionary's first line, default 1: class 0 is the blank); ``space`` (default false: a
space character is the class after the dictionary's last, as PaddleOCR's
``use_space_char``); ``separator`` (default empty): the text between decoded symbols, a
space for a vocabulary of words. When C is fixed, every class but the blank must map to a character.
The text is BYTES (UTF-8) [N, 1]; ``scores`` is FP32 [N, 1], the mean of the winning
values of the characters kept (0 for an empty text), so run ``softmax`` first, in a chain,
or set ``softmax: true`` for a model that gives logits.

**nms** reads [N, boxes, 4 + classes] (``transpose: true`` for [N, 4 + classes, boxes], as
YOLOv8 exports): a box (``format`` ``xywh``, centre and size, or ``xyxy``) and a score per
class; ``objectness: true`` when a YOLOv5-style objectness column follows the box (the
score is then objectness × class score). Boxes whose best score passes ``score`` (0.25) go,
best first (at most ``max_candidates``, 30000), through greedy non-maximum suppression at
IoU ``iou`` (0.45), per class when ``classes`` is true (default) or across classes when
false, keeping ``max_detections`` (100). The output is FP32 [N, max_detections, 6] of
(x1, y1, x2, y2, score, class), rows past the last detection filled with -1; coordinates
are those of the model input. ``labels`` is BYTES [N, max_detections], the class names from
the output's labels file (empty past the last detection).
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

__all__ = ["CtcGreedy", "Decoder", "Nms", "label_names", "suppress"]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float32) - x.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _per_row(dims: tuple[int, ...], rank: int) -> tuple[int, ...] | None:
    """The dims of one row: ``dims`` itself, or after a leading batch axis (-1 or 1) that a
    model without batching declares. None when they do not have ``rank`` axes."""
    if len(dims) == rank + 1 and dims[0] in (-1, 1):
        return dims[1:]
    return dims if len(dims) == rank else None


def _flag(options: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = options.pop(key, default)
    if not isinstance(value, bool):
        raise InvalidModelConfig(f"{where}: {key} must be true or false")
    return value


def _real(options: dict[str, Any], key: str, default: float, where: str) -> float:
    value = options.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidModelConfig(f"{where}: {key} must be a number")
    return float(value)


def _count(options: dict[str, Any], key: str, default: int, where: str) -> int:
    value = options.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidModelConfig(f"{where}: {key} must be a positive integer")
    return value


# --------------------------------------------------------------------------- CTC
class CtcGreedy:
    """Greedy CTC decoding of [N, T, C] scores into text and a mean confidence per row."""

    def __init__(
        self, source: TensorSpec, options: Mapping[str, Any], model_dir: Path | None, where: str
    ) -> None:
        opts = dict(options)
        chars = self._characters(opts, model_dir, where)
        self.blank = opts.pop("blank", 0)
        self.offset = opts.pop("offset", 1)
        for key, value in (("blank", self.blank), ("offset", self.offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidModelConfig(f"{where}: {key} must be a class index (>= 0)")
        if _flag(opts, "space", False, where):
            chars.append(" ")
        self.softmax = _flag(opts, "softmax", False, where)
        self.separator = opts.pop("separator", "")
        if not isinstance(self.separator, str):
            raise InvalidModelConfig(f"{where}: separator must be a string")
        self.scores = opts.pop("scores", None)
        if opts:
            raise InvalidModelConfig(f"{where}: unknown ctc_greedy option(s) {sorted(opts)}")
        if _per_row(source.dims, 2) is None:
            raise InvalidModelConfig(
                f"{where}: ctc_greedy reads [T, C] per row, {source.name!r} is {list(source.dims)}"
            )
        classes = source.dims[-1]
        mapped = set(range(self.offset, self.offset + len(chars)))
        if self.blank in mapped:
            raise InvalidModelConfig(
                f"{where}: blank {self.blank} is also a character (offset {self.offset})"
            )
        if classes > 0 and mapped | {self.blank} != set(range(classes)):
            raise InvalidModelConfig(
                f"{where}: {source.name!r} has {classes} classes but blank {self.blank} and "
                f"{len(chars)} characters from class {self.offset} cover "
                f"{len(mapped | {self.blank})}"
            )
        size = max(self.offset + len(chars), self.blank + 1, classes)
        table = [""] * size
        table[self.offset : self.offset + len(chars)] = chars
        self.table = np.array(table, dtype=object)

    @staticmethod
    def _characters(opts: dict[str, Any], model_dir: Path | None, where: str) -> list[str]:
        alphabet, file = opts.pop("alphabet", None), opts.pop("dictionary", None)
        if (alphabet is None) == (file is None):
            raise InvalidModelConfig(f"{where}: ctc_greedy needs a dictionary file or alphabet")
        if alphabet is not None:
            if not isinstance(alphabet, str) or not alphabet:
                raise InvalidModelConfig(f"{where}: alphabet must be a non-empty string")
            return list(alphabet)
        if model_dir is None:
            raise InvalidModelConfig(f"{where}: a dictionary file needs the model folder")
        path = model_dir / str(file)
        if not path.resolve().is_relative_to(model_dir.resolve()) or not path.is_file():
            raise InvalidModelConfig(f"{where}: dictionary file {file} is missing")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidModelConfig(f"{where}: cannot read {file}: {exc}") from None
        # One character per line; only the line ending is stripped (a line may be a space).
        lines = [line.rstrip("\r\n") for line in text.splitlines(keepends=True)]
        if lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise InvalidModelConfig(f"{where}: dictionary file {file} is empty")
        return lines

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, T, C] → text BYTES [N, 1], mean score FP32 [N, 1]."""
        x = x.reshape(-1, x.shape[-2], x.shape[-1])
        if self.softmax:
            x = _softmax(x)
        best = x.argmax(axis=-1)
        value = np.take_along_axis(x, best[..., None], axis=-1)[..., 0].astype(np.float32)
        keep = best != self.blank
        keep[:, 1:] &= best[:, 1:] != best[:, :-1]
        texts = np.empty((x.shape[0], 1), dtype=object)
        scores = np.zeros((x.shape[0], 1), dtype=np.float32)
        table = self.table
        for r in range(x.shape[0]):
            kept = best[r, keep[r]]
            kept = kept[kept < table.size]
            texts[r, 0] = self.separator.join(table[kept]).encode()
            if keep[r].any():
                scores[r, 0] = value[r, keep[r]].mean()
        return texts, scores


# --------------------------------------------------------------------------- NMS
class Nms:
    """YOLO-style boxes with class scores → [N, max_detections, 6] after NMS."""

    def __init__(self, source: TensorSpec, options: Mapping[str, Any], where: str) -> None:
        opts = dict(options)
        self.iou = _real(opts, "iou", 0.45, where)
        self.score = _real(opts, "score", 0.25, where)
        self.max_detections = _count(opts, "max_detections", 100, where)
        self.max_candidates = _count(opts, "max_candidates", 30000, where)
        self.format = opts.pop("format", "xywh")
        if self.format not in ("xywh", "xyxy"):
            raise InvalidModelConfig(f"{where}: format must be xywh or xyxy")
        self.classwise = _flag(opts, "classes", True, where)
        self.transpose = _flag(opts, "transpose", False, where)
        self.objectness = _flag(opts, "objectness", False, where)
        self.labels = opts.pop("labels", None)
        #: The image input whose pictures the boxes are mapped back into (their own pixels).
        self.image = opts.pop("image", None)
        if self.image is not None and (not isinstance(self.image, str) or not self.image):
            raise InvalidModelConfig(f"{where}: image must name the model's image input")
        if opts:
            raise InvalidModelConfig(f"{where}: unknown nms option(s) {sorted(opts)}")
        dims = _per_row(source.dims, 2) or ()
        if not dims:
            raise InvalidModelConfig(
                f"{where}: nms reads [boxes, 4 + classes] per row, {source.name!r} is {list(dims)}"
            )
        width = dims[0] if self.transpose else dims[1]
        self.first_class = 5 if self.objectness else 4
        if 0 < width <= self.first_class:
            raise InvalidModelConfig(
                f"{where}: {source.name!r} {list(dims)} has no class scores "
                + ("(is it transposed? set transpose: true)" if not self.transpose else "")
            )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[N, boxes, 4 + classes] → FP32 [N, max_detections, 6], padded with -1."""
        x = x.reshape(-1, x.shape[-2], x.shape[-1])
        if self.transpose:
            x = x.swapaxes(-1, -2)
        out = np.full((x.shape[0], self.max_detections, 6), -1.0, dtype=np.float32)
        for r in range(x.shape[0]):
            found = self._one(x[r].astype(np.float32, copy=False))
            out[r, : len(found)] = found
        return out

    def _one(self, rows: np.ndarray) -> np.ndarray:
        scores = rows[:, self.first_class :]
        if self.objectness:
            scores = scores * rows[:, 4:5]
        cls = scores.argmax(axis=-1)
        best = np.take_along_axis(scores, cls[:, None], axis=-1)[:, 0]
        chosen = np.flatnonzero(best > self.score)
        if chosen.size == 0:
            return np.zeros((0, 6), dtype=np.float32)
        order = chosen[np.argsort(-best[chosen], kind="stable")][: self.max_candidates]
        boxes = rows[order, :4]
        if self.format == "xywh":
            half = boxes[:, 2:4] / 2
            boxes = np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)
        kept = suppress(boxes, cls[order], self.iou, self.classwise, self.max_detections)
        return np.concatenate(
            [boxes[kept], best[order][kept, None], cls[order][kept, None].astype(np.float32)],
            axis=1,
        )


def suppress(
    boxes: np.ndarray,
    classes: np.ndarray | None,
    threshold: float,
    classwise: bool = False,
    limit: int = 0,
    *,
    overlap: str = "iou",
    inclusive: bool = False,
) -> np.ndarray:
    """Greedy NMS over ``[x1, y1, x2, y2]`` boxes sorted best first: indices kept, at most
    ``limit`` (0: no limit).

    Each kept box suppresses, in one vector operation, every later box of its class (any
    class when not ``classwise``) that overlaps it by more than ``threshold``: intersection
    over union (``overlap="iou"``) or over the smaller box (``"min"``). ``inclusive`` counts
    corners as pixels (a box's width is ``x2 - x1 + 1``), the convention of MTCNN's NMS.
    """
    if overlap not in ("iou", "min"):
        raise ValueError(f"overlap must be iou or min, got {overlap!r}")
    one = 1.0 if inclusive else 0.0
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.maximum(x2 - x1 + one, 0) * np.maximum(y2 - y1 + one, 0)
    alive = np.ones(len(boxes), dtype=bool)
    kept: list[int] = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == limit:
            break
        rest = slice(i + 1, None)
        w = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one
        h = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        if overlap == "iou":
            base = area[i] + area[rest] - inter
        else:
            base = np.minimum(area[i], area[rest])
        hit = inter / np.maximum(base, 1e-12) > threshold
        if classwise and classes is not None:
            hit &= classes[rest] == classes[i]
        alive[rest] &= ~hit
    return np.asarray(kept, dtype=np.int64)


# --------------------------------------------------------------------------- processors
class Decoder(OutputProcessor):
    """A ``decode:`` output entry: one decoder, its main output and an optional second."""

    def __init__(
        self,
        name: str,
        source: TensorSpec,
        kind: str,
        options: Mapping[str, Any],
        labels: Sequence[str],
        model_dir: Path | None,
    ) -> None:
        where = f"output {name!r}"
        self.name, self.source = name, source.name
        self.sources = (source.name,)
        self.labels = tuple(labels)
        self.decoder: CtcGreedy | Nms
        if kind == "ctc_greedy":
            self.decoder = CtcGreedy(source, options, model_dir, where)
            extra = self.decoder.scores
            outputs = [TensorSpec(name=name, datatype=DataType.BYTES, dims=(1,))]
            if extra is not None:
                outputs.append(TensorSpec(name=str(extra), datatype=DataType.FP32, dims=(1,)))
        elif kind == "nms":
            self.decoder = Nms(source, options, where)
            if self.decoder.image is not None:
                from forwardpass.processing.image import geometry_key

                self.geometry: str | None = geometry_key(self.decoder.image)
                self.sources = (source.name, self.geometry)
            extra = self.decoder.labels
            size = self.decoder.max_detections
            outputs = [TensorSpec(name=name, datatype=DataType.FP32, dims=(size, 6))]
            if extra is not None:
                if not self.labels:
                    raise InvalidModelConfig(
                        f"{where}: labels need a labels file for {source.name!r}"
                    )
                outputs.append(TensorSpec(name=str(extra), datatype=DataType.BYTES, dims=(size,)))
        else:
            raise InvalidModelConfig(f"{where}: decode must be ctc_greedy or nms, got {kind!r}")
        if extra is not None and (not isinstance(extra, str) or not extra or extra == name):
            raise InvalidModelConfig(f"{where}: the second output needs its own name")
        self.extra = None if extra is None else str(extra)
        self.outputs = tuple(outputs)

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays[self.source]
        if isinstance(self.decoder, CtcGreedy):
            texts, scores = self.decoder(x)
            out = {self.name: texts}
            if self.extra:
                out[self.extra] = scores
            return out
        detections = self.decoder(x)
        geometry = getattr(self, "geometry", None)
        if geometry is not None:
            to_picture(detections, arrays[geometry])
        out = {self.name: detections}
        if self.extra:
            out[self.extra] = label_names(detections, self.labels)
        return out


def to_picture(detections: np.ndarray, geometry: np.ndarray) -> None:
    """Map boxes [N, max_detections, 6] from model-input pixels back into each picture's own
    (geometry rows ``sx, sy, ox, oy, width, height``), clipped to the picture; in place.
    Padding rows (class -1) stay as they are."""
    for r in range(detections.shape[0]):
        sx, sy, ox, oy, width, height = (float(v) for v in geometry[r])
        rows = detections[r]
        real = rows[:, 5] >= 0
        boxes = rows[real, :4]
        boxes[:, 0::2] = np.clip((boxes[:, 0::2] - ox) / sx, 0, width)
        boxes[:, 1::2] = np.clip((boxes[:, 1::2] - oy) / sy, 0, height)
        rows[real, :4] = boxes


def label_names(detections: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """BYTES [N, max_detections]: each detection's class name (its number when the labels
    file has none), b"" for padding rows."""
    classes = detections[..., 5].astype(np.int64)
    flat = [
        b"" if c < 0 else (labels[c].encode() if c < len(labels) else str(c).encode())
        for c in classes.reshape(-1).tolist()
    ]
    out = np.empty(classes.size, dtype=object)
    out[:] = flat
    return out.reshape(classes.shape)
