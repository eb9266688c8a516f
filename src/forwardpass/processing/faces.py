"""MTCNN's glue: P-Net maps → face candidates → R-Net crops → O-Net crops → faces.

Three functions for the ``function`` backend, the steps between the networks of an MTCNN
ensemble (built by :mod:`forwardpass.zoo.mtcnn`)::

    image ─▶ image_pyramid ─▶ pnet ─▶ mtcnn_propose ─▶ rnet ─▶ mtcnn_refine ─▶ onet ─▶ mtcnn_faces

Boxes are ``[x1, y1, x2, y2]`` in the picture's pixels; a crop is the box clipped to the
picture (MTCNN's 1-based convention: columns ``x1 - 1 .. x2``), resampled by area averaging
to the next network's square input and normalised to ``(x - 127.5) / 128``, channels first.

**mtcnn_propose** (:func:`propose`) reads ``reg`` ``[1, 4, h, w]`` and ``prob`` ``[1, 2, h, w]``
(P-Net on the pyramid canvas of :mod:`.pyramid`), ``levels`` and ``pixels``. Each level's
cells scoring at least ``threshold`` (0.6) become 12×12 windows mapped back to the picture
(stride 2), are thinned by NMS within the level (IoU ``level_iou`` 0.5) and then across
levels (``iou`` 0.7), moved by their regression offsets and squared. Gives ``boxes`` FP32
``[K, 5]`` (box and score) and ``crops`` FP32 ``[K, 3, size, size]`` (``size`` 24).

**mtcnn_refine** (:func:`refine`) reads ``boxes``, the next network's ``reg`` ``[K, 4]`` and
``prob`` ``[K, 2]``, and ``pixels``: candidates scoring above ``threshold`` (0.7) are kept, thinned
by NMS (``iou`` 0.7), moved by the regression (box sides counted in pixels, ``x2 - x1 + 1``)
and squared. Gives ``boxes`` ``[K', 5]`` and ``crops`` ``[K', 3, size, size]`` (``size`` 48).

**mtcnn_faces** (:func:`faces`) reads ``boxes``, O-Net's ``reg`` ``[K, 4]``, ``landmarks``
``[K, 10]`` (five x then five y, relative to the box) and ``prob`` ``[K, 2]``: candidates
scoring above ``threshold`` (0.7) get their landmarks placed in the picture, are moved by the
regression and thinned by NMS over the smaller box (``iou`` 0.7). Gives ``boxes`` FP32
``[F, 4]``, ``scores`` FP32 ``[F]`` and ``landmarks`` FP32 ``[F, 5, 2]`` (x, y: left eye, right
eye, nose, mouth left, mouth right), best first. No face is ``F = 0``, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from forwardpass.errors import InvalidArgument
from forwardpass.processing.decoding import suppress
from forwardpass.processing.pyramid import area_resize, number, whole

__all__ = ["crop_squares", "faces", "level_cells", "propose", "refine"]

_MEAN, _SCALE = np.float32(127.5), np.float32(0.0078125)
_F32 = np.float32


def _array(inputs: Mapping[str, np.ndarray], name: str, ndim: int, width: int = 0) -> np.ndarray:
    x = np.asarray(inputs[name])
    if x.ndim != ndim or (width and x.shape[-1] != width):
        want = f"{ndim} dimensions" + (f", the last {width}" if width else "")
        raise InvalidArgument(f"input {name!r} must have {want}, got {list(x.shape)}")
    return x


def _pixels(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    pixels = _array(inputs, "pixels", 3, 3)
    if pixels.dtype != np.uint8:
        raise InvalidArgument(f"input 'pixels' must be UINT8, got {pixels.dtype}")
    return pixels


def _rows(name: str, x: np.ndarray, rows: int) -> None:
    if x.shape[0] != rows:
        raise InvalidArgument(f"input {name!r} has {x.shape[0]} rows, the boxes {rows}")


def level_cells(levels: np.ndarray, stride: int, cell: int) -> list[tuple[int, int, int, int]]:
    """Each pyramid level's output cells in the canvas map: ``(row, col, rows, cols)``.

    A level ``w × h`` gives ``⌈(w - 2) / 2⌉ - 4`` columns (and rows likewise) through P-Net
    (3×3 conv, 2×2 ceil-mode pool, two 3×3 convs); levels sit at even canvas offsets, so
    their cells start at half their offsets. Only P-Net's stride 2 and 12-pixel cell fit.
    """
    if (stride, cell) != (2, 12):
        raise InvalidArgument("MTCNN's proposal net has stride 2 and 12-pixel cells")
    out = []
    for x, y, w, h, _ in levels.tolist():
        out.append((int(y) // 2, int(x) // 2, -(-(int(h) - 2) // 2) - 4, -(-(int(w) - 2) // 2) - 4))
    return out


def _nms_order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def _nms(boxes: np.ndarray, iou: float, *, overlap: str = "iou", inclusive: bool = False) -> list:
    """Rows of ``boxes`` ``[K, 5+]`` kept by NMS, best score first."""
    order = _nms_order(boxes[:, 4])
    kept = suppress(boxes[order, :4], None, iou, overlap=overlap, inclusive=inclusive)
    result: list[int] = order[kept].tolist()
    return result


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres (MTCNN's ``rerec``)."""
    out = boxes.copy()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * _F32(0.5) - side * _F32(0.5)
    out[:, 1] = boxes[:, 1] + h * _F32(0.5) - side * _F32(0.5)
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Boxes moved by regression offsets relative to their sides in pixels (``bbreg``)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def crop_squares(pixels: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, list]:
    """Each box's region of ``pixels`` (clipped to the picture, 1-based corners truncated to
    integers) resampled to ``size × size`` and normalised, ``[K, 3, size, size]``; and the
    rows whose region is not empty (only those have a crop)."""
    h, w = pixels.shape[:2]
    corners = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(corners[:, 0], 1)
    y = np.maximum(corners[:, 1], 1)
    ex = np.minimum(corners[:, 2], w)
    ey = np.minimum(corners[:, 3], h)
    kept = [k for k in range(len(boxes)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
    crops = np.zeros((len(kept), 3, size, size), dtype=np.float32)
    for i, k in enumerate(kept):
        region = pixels[y[k] - 1 : ey[k], x[k] - 1 : ex[k]]
        crops[i] = ((area_resize(region, size, size) - _MEAN) * _SCALE).transpose(2, 0, 1)
    return crops, kept


def propose(inputs: Mapping[str, np.ndarray], params: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``reg``, ``prob``, ``levels``, ``pixels`` → ``boxes``, ``crops`` (module docstring)."""
    threshold = number(params, "threshold", 0.6)
    level_iou = number(params, "level_iou", 0.5)
    iou = number(params, "iou", 0.7)
    size = whole(params, "size", 24)
    reg = _array(inputs, "reg", 4)
    prob = _array(inputs, "prob", 4)
    levels = _array(inputs, "levels", 2, 5)
    pixels = _pixels(inputs)
    if reg.shape[:2] != (1, 4) or prob.shape[:2] != (1, 2) or reg.shape[2:] != prob.shape[2:]:
        raise InvalidArgument(
            f"inputs 'reg' and 'prob' must be [1,4,h,w] and [1,2,h,w], got "
            f"{list(reg.shape)} and {list(prob.shape)}"
        )
    found = []
    for (row, col, rows, cols), scale in zip(
        level_cells(levels, 2, 12), levels[:, 4].tolist(), strict=True
    ):
        if row + rows > prob.shape[2] or col + cols > prob.shape[3] or rows < 1 or cols < 1:
            raise InvalidArgument(f"input 'prob' {list(prob.shape)} does not cover the levels")
        score = prob[0, 1, row : row + rows, col : col + cols].astype(np.float32)
        at = np.nonzero(score >= threshold)
        if not at[0].size:
            continue
        offsets = reg[0, :, row : row + rows, col : col + cols][:, at[0], at[1]].T
        cell_xy = np.stack([at[1], at[0]], axis=1).astype(np.float32)
        s = _F32(scale)
        top_left = np.floor((2 * cell_xy + 1) / s)
        bottom_right = np.floor((2 * cell_xy + 12) / s)
        boxes = np.concatenate(
            [top_left, bottom_right, score[at][:, None], offsets.astype(np.float32)], axis=1
        )
        found.append(boxes[_nms(boxes, level_iou)])
    if not found:
        return {
            "boxes": np.zeros((0, 5), np.float32),
            "crops": np.zeros((0, 3, size, size), np.float32),
        }
    boxes = np.concatenate(found)
    boxes = boxes[_nms(boxes, iou)]
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    moved = np.stack(
        [
            boxes[:, 0] + boxes[:, 5] * w,
            boxes[:, 1] + boxes[:, 6] * h,
            boxes[:, 2] + boxes[:, 7] * w,
            boxes[:, 3] + boxes[:, 8] * h,
            boxes[:, 4],
        ],
        axis=1,
    )
    squares = _square(moved)
    crops, kept = crop_squares(pixels, squares, size)
    return {"boxes": squares[kept].astype(np.float32), "crops": crops}


def _stage(
    inputs: Mapping[str, np.ndarray], extra: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    boxes = _array(inputs, "boxes", 2, 5).astype(np.float32)
    reg = _array(inputs, "reg", 2, 4).astype(np.float32)
    prob = _array(inputs, "prob", 2, 2).astype(np.float32)
    more = [_array(inputs, name, 2).astype(np.float32) for name in extra]
    for name, x in (("reg", reg), ("prob", prob), *zip(extra, more, strict=True)):
        _rows(name, x, len(boxes))
    return boxes, reg, prob, more


def refine(inputs: Mapping[str, np.ndarray], params: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``boxes``, ``reg``, ``prob``, ``pixels`` → ``boxes``, ``crops`` (module docstring)."""
    threshold = number(params, "threshold", 0.7)
    iou = number(params, "iou", 0.7)
    size = whole(params, "size", 48)
    boxes, reg, prob, _ = _stage(inputs, ())
    pixels = _pixels(inputs)
    passed = prob[:, 1] > threshold
    boxes = np.concatenate([boxes[passed, :4], prob[passed, 1:2]], axis=1)
    reg = reg[passed]
    kept = _nms(boxes, iou)
    squares = _square(_regress(boxes[kept], reg[kept]))
    crops, cropped = crop_squares(pixels, squares, size)
    return {"boxes": squares[cropped].astype(np.float32), "crops": crops}


def faces(inputs: Mapping[str, np.ndarray], params: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``boxes``, ``reg``, ``landmarks``, ``prob`` → ``boxes``, ``scores``, ``landmarks``."""
    threshold = number(params, "threshold", 0.7)
    iou = number(params, "iou", 0.7)
    boxes, reg, prob, (points,) = _stage(inputs, ("landmarks",))
    if points.shape[1] != 10:
        raise InvalidArgument(f"input 'landmarks' must be [K,10], got {list(points.shape)}")
    passed = prob[:, 1] > threshold
    boxes = np.concatenate([boxes[passed, :4], prob[passed, 1:2]], axis=1)
    reg, points = reg[passed], points[passed]
    w = boxes[:, 2:3] - boxes[:, 0:1] + 1
    h = boxes[:, 3:4] - boxes[:, 1:2] + 1
    xs = w * points[:, :5] + boxes[:, 0:1] - 1
    ys = h * points[:, 5:] + boxes[:, 1:2] - 1
    landmarks = np.stack([xs, ys], axis=2)
    boxes = _regress(boxes, reg)
    kept = _nms(boxes, iou, overlap="min", inclusive=True)
    return {
        "boxes": boxes[kept, :4].astype(np.float32).reshape(-1, 4),
        "scores": boxes[kept, 4].astype(np.float32).reshape(-1),
        "landmarks": landmarks[kept].astype(np.float32).reshape(-1, 5, 2),
    }
