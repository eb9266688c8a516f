"""OCR glue: a text-detection map → cropped text lines, and the lines' direction fix-up.

Two functions for the ``function`` backend (:mod:`forwardpass.runtime.function`), the steps
between the networks of a PP-OCR ensemble (built by :mod:`forwardpass.zoo.ppocr`)::

    image ─▶ det (DB net) ─▶ ocr_detect_crop ─▶ cls (direction) ─▶ ocr_orient ─▶ rec (CTC)

**ocr_detect_crop** (:func:`detect_and_crop`) reads ``image``, the request's encoded picture
(one BYTES element), and ``maps``, the detector's text probability map ``[1, 1, Hm, Wm]``
computed on the picture *letterboxed* into ``Hm × Wm`` (scaled to fit, centred, as the
image input's ``resize: {letterbox: [Hm, Wm]}`` does). It finds the text boxes
(Differentiable Binarization post-processing: threshold the map, take each connected
region's minimum-area rectangle, keep it when the mean probability inside passes
``box_threshold``, grow it by ``area × unclip_ratio / perimeter`` with pyclipper and take the
grown polygon's rectangle), maps them back onto the original picture, sorts them in reading
order (top to bottom, then left to right within a line) and cuts each line out of the
original picture with a perspective warp. A line much taller than wide is turned 90°. Each
line is then resized to height 48, keeping its aspect ratio, and normalised to
``(x / 255 - 0.5) / 0.5``, channels first, for two consumers:

- ``crops`` FP32 ``[K, 3, 48, W]``: for the recogniser, each line at most ``rec_max_width``
  wide, right-padded with 0 to ``W``, the widest line (at least ``rec_min_width``);
- ``cls_crops`` FP32 ``[K, 3, 48, 192]``: for the direction classifier, each line at most
  ``cls_width`` wide (longer ones squeezed), right-padded with 0;
- ``widths`` INT32 ``[K]``: each line's width inside ``crops`` (the rest is padding);
- ``boxes`` FP32 ``[K, 4, 2]``: corners (x, y) in the original picture's pixels, clockwise
  from the top-left; ``box_scores`` FP32 ``[K]``: the mean probability inside each box.

Pixels are handled in BGR order, as PaddleOCR's models were trained on OpenCV's images.

**ocr_orient** (:func:`orient_crops`) reads ``crops``, ``widths`` and ``cls_probs`` (the
classifier's ``[K, 2]`` softmax over the labels "0" and "180") and gives ``oriented``: the
crops with each line whose "180" probability passes ``cls_threshold`` turned upside down
(only its ``widths`` columns, so the padding stays on the right).

Zero lines (a blank picture) is an ordinary answer: every output has K = 0 rows, and the
engine answers zero-row requests to the later steps without running their networks.

Both read their options from the model's string parameters (defaults in brackets):
``det_threshold`` (0.3), ``box_threshold`` (0.5), ``unclip_ratio`` (1.6), ``max_candidates``
(1000), ``min_size`` (3, map pixels), ``dilate`` (true: grow the thresholded map by one
pixel first, as RapidOCR does; without it boxes come out a pixel tight and spaces between
words can be lost), ``vertical_ratio`` (1.5), ``line_height`` (48),
``rec_min_width`` (320), ``rec_max_width`` (1600), ``cls_width`` (192) and ``cls_threshold``
(0.9). OpenCV (``opencv-python``) and ``pyclipper`` are imported on first use.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.processing.image import undecodable

__all__ = [
    "DbOptions",
    "crop_line",
    "db_boxes",
    "detect_and_crop",
    "orient_crops",
    "reading_order",
]

#: A whole command, last in its message, so it can be copied as it is.
_PIP = "pip install 'forwardpass[ocr]'"


def _libraries() -> tuple[Any, Any]:
    """OpenCV and pyclipper, imported on first use."""
    try:
        import cv2
        import pyclipper
    except ImportError as exc:
        raise InvalidModelConfig(
            f"the OCR functions need {exc.name} (opencv-python and pyclipper, "
            f"which the ocr extra installs): {_PIP}"
        ) from None
    return cv2, pyclipper


# --------------------------------------------------------------------------- options
def _number(params: Mapping[str, str], key: str, default: float) -> float:
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidModelConfig(f"parameter {key} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidModelConfig(f"parameter {key} must be a non-negative number, got {raw!r}")
    return value


def _whole(params: Mapping[str, str], key: str, default: int) -> int:
    value = _number(params, key, default)
    if value != int(value) or value < 1:
        raise InvalidModelConfig(f"parameter {key} must be a positive integer, got {value}")
    return int(value)


def _flag(params: Mapping[str, str], key: str, default: bool) -> bool:
    raw = params.get(key, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise InvalidModelConfig(f"parameter {key} must be true or false, got {raw!r}")
    return raw == "true"


@dataclass(frozen=True, slots=True)
class DbOptions:
    """Differentiable Binarization post-processing settings (PaddleOCR's defaults)."""

    threshold: float = 0.3
    box_threshold: float = 0.5
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    min_size: int = 3
    #: Grow the thresholded map by one pixel (2×2 dilation) before finding regions.
    dilate: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DbOptions:
        default = cls()
        return cls(
            threshold=_number(params, "det_threshold", default.threshold),
            box_threshold=_number(params, "box_threshold", default.box_threshold),
            unclip_ratio=_number(params, "unclip_ratio", default.unclip_ratio),
            max_candidates=_whole(params, "max_candidates", default.max_candidates),
            min_size=_whole(params, "min_size", default.min_size),
            dilate=_flag(params, "dilate", default.dilate),
        )


# --------------------------------------------------------------------------- DB boxes
def db_boxes(prob: np.ndarray, options: DbOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Text boxes in a probability map ``[H, W]``: FP32 ``[K, 4, 2]`` corners (x, y) in map
    pixels, clockwise from the top-left, and FP32 ``[K]`` mean probabilities, unsorted."""
    cv2, _ = _libraries()
    opts = options or DbOptions()
    prob = np.asarray(prob, dtype=np.float32)
    bitmap = (prob > opts.threshold).astype(np.uint8)
    if opts.dilate:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), dtype=np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes: list[np.ndarray] = []
    scores: list[float] = []
    for contour in contours[: opts.max_candidates]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < opts.min_size:
            continue
        quad = cv2.boxPoints(rect).astype(np.float32)
        score = _mean_inside(prob, quad)
        if score < opts.box_threshold:
            continue
        grown = _unclip(quad, opts.unclip_ratio)
        if grown is None:
            continue
        rect = cv2.minAreaRect(grown)
        if min(rect[1]) < opts.min_size + 2:
            continue
        boxes.append(_clockwise(cv2.boxPoints(rect)))
        scores.append(score)
    if not boxes:
        return np.zeros((0, 4, 2), np.float32), np.zeros((0,), np.float32)
    return np.stack(boxes).astype(np.float32), np.asarray(scores, dtype=np.float32)


def _mean_inside(prob: np.ndarray, quad: np.ndarray) -> float:
    """The mean of ``prob`` over the pixels inside the quadrilateral."""
    cv2, _ = _libraries()
    height, width = prob.shape
    x0 = int(np.clip(np.floor(quad[:, 0].min()), 0, width - 1))
    x1 = int(np.clip(np.ceil(quad[:, 0].max()), 0, width - 1))
    y0 = int(np.clip(np.floor(quad[:, 1].min()), 0, height - 1))
    y1 = int(np.clip(np.ceil(quad[:, 1].max()), 0, height - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    corners = np.round(quad - np.array([x0, y0], dtype=np.float32)).astype(np.int32)
    cv2.fillPoly(mask, [corners], 1)
    inside = prob[y0 : y1 + 1, x0 : x1 + 1][mask.astype(bool)]
    return float(inside.mean()) if inside.size else 0.0


def _unclip(quad: np.ndarray, ratio: float) -> np.ndarray | None:
    """Grow a quadrilateral outwards by ``area × ratio / perimeter`` (rounded corners)."""
    _, pyclipper = _libraries()
    x, y = quad[:, 0].astype(np.float64), quad[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    perimeter = float(np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1).sum())
    if perimeter <= 0 or area <= 0:
        return None
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(
        np.round(quad).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON
    )
    paths = offset.Execute(area * ratio / perimeter)
    if not paths:
        return None
    largest = max(paths, key=lambda p: abs(pyclipper.Area(p)))
    return np.asarray(largest, dtype=np.float32).reshape(-1, 1, 2)


def _clockwise(points: np.ndarray) -> np.ndarray:
    """Four corners ordered top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    top_left, bottom_left = left[np.argsort(left[:, 1], kind="stable")]
    top_right, bottom_right = right[np.argsort(right[:, 1], kind="stable")]
    return np.stack([top_left, top_right, bottom_right, bottom_left]).astype(np.float32)


def reading_order(boxes: np.ndarray) -> np.ndarray:
    """Indices of ``boxes`` [K, 4, 2] top to bottom, then left to right within a line.

    Boxes whose vertical centres lie within half a box height of the first box of the
    current line count as the same line.
    """
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    centre = boxes[:, :, 1].mean(axis=1)
    height = boxes[:, :, 1].max(axis=1) - boxes[:, :, 1].min(axis=1)
    left = boxes[:, :, 0].min(axis=1)
    order: list[int] = []
    line: list[int] = []
    for i in np.argsort(centre, kind="stable").tolist():
        if line and centre[i] - centre[line[0]] > 0.5 * max(height[line[0]], 1.0):
            order.extend(sorted(line, key=lambda j: left[j]))
            line = []
        line.append(i)
    order.extend(sorted(line, key=lambda j: left[j]))
    return np.asarray(order, dtype=np.int64)


# --------------------------------------------------------------------------- crops
def crop_line(image: np.ndarray, quad: np.ndarray, vertical_ratio: float = 1.5) -> np.ndarray:
    """Cut the quadrilateral ``quad`` [4, 2] out of ``image`` [H, W, C] as an upright
    rectangle; a line at least ``vertical_ratio`` times taller than wide is turned 90°."""
    cv2, _ = _libraries()
    quad = quad.astype(np.float32)
    width = max(1, round(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[3] - quad[2]))))
    height = max(
        1, round(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    )
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(quad, target)
    line = cv2.warpPerspective(
        image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if height >= vertical_ratio * width:
        line = np.ascontiguousarray(np.rot90(line))
    return np.asarray(line)


def _normalised(line: np.ndarray, height: int, max_width: int) -> np.ndarray:
    """A line resized to ``height`` (aspect kept, width capped), (x/255-0.5)/0.5, CHW."""
    cv2, _ = _libraries()
    h, w = line.shape[:2]
    width = max(1, min(max_width, math.ceil(height * w / h)))
    resized = cv2.resize(line, (width, height), interpolation=cv2.INTER_LINEAR)
    pixels = resized.astype(np.float32) / 255.0
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)


def _padded(lines: list[np.ndarray], height: int, width: int) -> np.ndarray:
    out = np.zeros((len(lines), 3, height, width), dtype=np.float32)
    for k, line in enumerate(lines):
        out[k, :, :, : line.shape[2]] = line
    return out


# --------------------------------------------------------------------------- functions
def _decode(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The request's one encoded picture as BGR uint8 [H, W, 3] (EXIF rotation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    data = inputs["image"].reshape(-1)
    if data.size != 1:
        raise InvalidArgument(f"ocr_detect_crop reads one image per request, got {data.size}")
    blob = data[0]
    if not isinstance(blob, bytes | bytearray) or not blob:
        raise InvalidArgument("input 'image' is empty")
    try:
        with Image.open(io.BytesIO(blob)) as source:
            img = (ImageOps.exif_transpose(source) or source).convert("RGB")
            rgb = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidArgument(
            f"input 'image': cannot decode image: {undecodable(blob, exc)}"
        ) from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _to_picture(boxes: np.ndarray, map_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Map-pixel boxes → original-picture pixels, undoing the letterbox (fit and centre)."""
    map_h, map_w = map_size
    h, w = size
    scale = min(map_w / w, map_h / h)
    inner_w, inner_h = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (map_w - inner_w) // 2, (map_h - inner_h) // 2
    out = boxes.copy()
    out[..., 0] = np.clip((out[..., 0] - left) * (w / inner_w), 0, w - 1)
    out[..., 1] = np.clip((out[..., 1] - top) * (h / inner_h), 0, h - 1)
    return out


def detect_and_crop(
    inputs: Mapping[str, np.ndarray], params: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """``image`` + ``maps`` → ``crops``, ``cls_crops``, ``widths``, ``boxes``, ``box_scores``.

    See the module docstring for the tensors and parameters. Registered as
    ``ocr_detect_crop``; serve it with ``max_batch_size: 0`` (K lines from one picture).
    """
    options = DbOptions.from_params(params)
    vertical_ratio = _number(params, "vertical_ratio", 1.5)
    height = _whole(params, "line_height", 48)
    rec_min = _whole(params, "rec_min_width", 320)
    rec_max = max(_whole(params, "rec_max_width", 1600), rec_min)
    cls_width = _whole(params, "cls_width", 192)

    maps = np.asarray(inputs["maps"], dtype=np.float32)
    if maps.ndim < 2 or math.prod(maps.shape[:-2]) != 1:
        raise InvalidArgument(f"input 'maps' must hold one [H, W] map, got {list(maps.shape)}")
    prob: np.ndarray = maps.reshape(maps.shape[-2], maps.shape[-1])
    image = _decode(inputs)

    found, scores = db_boxes(prob, options)
    order = reading_order(found)
    found, scores = found[order], scores[order]
    map_size = (int(prob.shape[0]), int(prob.shape[1]))
    boxes = _to_picture(found, map_size, (int(image.shape[0]), int(image.shape[1])))

    rec_lines: list[np.ndarray] = []
    cls_lines: list[np.ndarray] = []
    for quad in boxes:
        line = crop_line(image, quad, vertical_ratio)
        rec_lines.append(_normalised(line, height, rec_max))
        cls_lines.append(_normalised(line, height, cls_width))
    widths = np.asarray([line.shape[2] for line in rec_lines], dtype=np.int32)
    rec_width = max([rec_min, *widths.tolist()])
    return {
        "crops": _padded(rec_lines, height, rec_width),
        "cls_crops": _padded(cls_lines, height, cls_width),
        "widths": widths.reshape(-1),
        "boxes": boxes.astype(np.float32).reshape(-1, 4, 2),
        "box_scores": scores.astype(np.float32).reshape(-1),
    }


def orient_crops(
    inputs: Mapping[str, np.ndarray], params: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """``crops`` + ``widths`` + ``cls_probs`` → ``oriented``: lines classified "180" with a
    probability above ``cls_threshold`` (0.9) turned upside down. Registered as
    ``ocr_orient``; serve it with ``max_batch_size: 0``."""
    threshold = _number(params, "cls_threshold", 0.9)
    crops = np.asarray(inputs["crops"], dtype=np.float32)
    widths = np.asarray(inputs["widths"]).reshape(-1)
    probs = np.asarray(inputs["cls_probs"], dtype=np.float32)
    rows = crops.shape[0] if crops.ndim == 4 else -1
    if rows < 0 or len(widths) != rows or probs.shape != (rows, 2):
        raise InvalidArgument(
            f"ocr_orient needs crops [K,3,H,W], widths [K] and cls_probs [K,2]; got "
            f"{list(crops.shape)}, {list(widths.shape)} and {list(probs.shape)}"
        )
    out = crops.copy()
    flip = (probs.argmax(axis=1) == 1) & (probs[:, 1] > threshold)
    for k in np.flatnonzero(flip).tolist():
        w = int(np.clip(widths[k], 0, crops.shape[3]))
        if w:
            out[k, :, :, :w] = crops[k, :, ::-1, w - 1 :: -1]
    return {"oriented": out}
