"""Image pyramids for sliding-window detectors, packed into one picture (a mosaic).

A fully convolutional detector (MTCNN's P-Net, a face / object proposal net) is run on the
picture at several scales. Running it once per scale would need a loop in the ensemble;
instead every scale is packed into one canvas with a gap between them, and the network runs
once on the canvas. Its output at a canvas cell depends only on the input window under that
cell, so the cells inside each scale's rectangle are what the network would give on that
scale alone (:func:`forwardpass.processing.faces.level_cells` finds them). One exception:
a ceil-mode pooling window at a scale's right or bottom edge is partial on the scale alone
but reaches into the gap on the canvas; the mask channel (``mask: true``) lets the network
ignore the gap there (:func:`forwardpass.zoo.mtcnn.masked_pnet`), which makes it exact.

**image_pyramid** (:func:`image_pyramid`, a ``function`` backend step) reads ``image``, one
encoded picture (BYTES), and gives:

- ``canvas`` FP32 ``[1, 3, Hc, Wc]``: every scale of the picture, RGB, ``(x - mean) * scale``,
  packed left to right in rows (largest first); the gaps and the rest hold 0. With
  ``mask: true`` a fourth channel holds 1 on the levels and 0 in the gaps
  (``[1, 4, Hc, Wc]``), for a network that must not see across a level's edge;
- ``levels`` FP32 ``[L, 5]``: each scale's ``x, y`` (top-left in the canvas), ``width,
  height`` and ``scale`` (its size over the picture's);
- ``pixels`` UINT8 ``[H, W, 3]``: the decoded picture (RGB, EXIF rotation applied), for the
  steps that cut regions out of it.

The scales are MTCNN's: the first maps ``min_size`` pixels of the picture onto ``cell``
pixels (``cell / min_size``), each next one is ``factor`` times the last, and they stop
before the picture's shorter side falls under ``cell``. A scale ``s`` picture is
``int(H·s + 1) × int(W·s + 1)``, resampled by area averaging (:func:`area_resize`, what
``torch.nn.functional.interpolate(mode="area")`` computes). Parameters (defaults):
``min_size`` (20), ``factor`` (0.709), ``cell`` (12), ``stride`` (2: offsets in the canvas are
multiples of it, so output cells line up with each scale's own), ``gap`` (``cell``),
``mean`` (127.5), ``scale`` (0.0078125), ``mask`` (false) and ``max_pixels`` (40,000,000: a
larger picture is refused with a 400). A picture whose shorter side is under ``min_size``
has no scale: the canvas is a blank ``cell × cell`` and ``levels`` has no rows.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.processing.image import undecodable

__all__ = [
    "area_resize",
    "area_sample",
    "decode_rgb",
    "image_pyramid",
    "integral",
    "pack",
    "pyramid_scales",
]


def number(params: Mapping[str, str], key: str, default: float, *, positive: bool = True) -> float:
    """The string parameter ``key`` as a finite number (``default`` when unset)."""
    raw = params.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidModelConfig(f"parameter {key} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise InvalidModelConfig(f"parameter {key} must be a positive number, got {raw!r}")
    return value


def whole(params: Mapping[str, str], key: str, default: int) -> int:
    """The string parameter ``key`` as a positive integer."""
    value = number(params, key, default)
    if value != int(value):
        raise InvalidModelConfig(f"parameter {key} must be a positive integer, got {value}")
    return int(value)


def decode_rgb(inputs: Mapping[str, np.ndarray], max_pixels: int) -> np.ndarray:
    """The request's one encoded ``image`` as RGB uint8 ``[H, W, 3]`` (EXIF rotation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    data = np.asarray(inputs["image"]).reshape(-1)
    if data.size != 1:
        raise InvalidArgument(f"input 'image' must hold one picture, got {data.size}")
    blob = data[0]
    if not isinstance(blob, bytes | bytearray) or not blob:
        raise InvalidArgument("input 'image' is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as source:
                if source.width * source.height > max_pixels:
                    raise InvalidArgument(
                        f"input 'image' is {source.width}x{source.height} pixels, more than "
                        f"the {max_pixels} this model accepts"
                    )
                picture = (ImageOps.exif_transpose(source) or source).convert("RGB")
                rgb = np.asarray(picture, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning) as exc:
        raise InvalidArgument(
            f"input 'image': cannot decode image: {undecodable(blob, exc)}"
        ) from None
    except Image.DecompressionBombError:
        raise InvalidArgument("input 'image' has too many pixels to decode") from None
    return rgb


def integral(pixels: np.ndarray) -> np.ndarray:
    """The summed-area table of ``pixels`` ``[H, W, C]``: float64 ``[H + 1, W + 1, C]`` whose
    ``[y, x]`` is the sum of ``pixels[:y, :x]`` (exact for 8-bit pictures)."""
    table = np.zeros((pixels.shape[0] + 1, pixels.shape[1] + 1, pixels.shape[2]), np.float64)
    np.cumsum(pixels, axis=0, dtype=np.float64, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


def _bounds(start: int, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(size)
    return start + (i * n) // size, start + ((i + 1) * n + size - 1) // size


def area_sample(
    table: np.ndarray, region: tuple[int, int, int, int], height: int, width: int
) -> np.ndarray:
    """The ``region`` ``(top, left, rows, cols)`` of the picture whose :func:`integral` is
    ``table``, resized to ``[height, width, C]`` by area averaging, FP32.

    Each output pixel is the mean of the input pixels its rectangle overlaps (rows
    ``⌊i·H/h⌋ .. ⌈(i+1)·H/h⌉``), which is adaptive average pooling: the same numbers as
    ``torch.nn.functional.interpolate(mode="area")``, up and down.
    """
    top, left, rows, cols = region
    if height < 1 or width < 1 or rows < 1 or cols < 1:
        raise InvalidArgument(f"cannot resize a {cols}x{rows} region to {width}x{height}")
    y0, y1 = _bounds(top, rows, height)
    x0, x1 = _bounds(left, cols, width)
    band = table[y1] - table[y0]  # each output row's column sums, [height, W + 1, C]
    sums = np.take(band, x1, axis=1) - np.take(band, x0, axis=1)
    inverse = 1.0 / ((y1 - y0)[:, None] * (x1 - x0)[None, :])
    result: np.ndarray = (sums * inverse[:, :, None]).astype(np.float32)
    return result


def area_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``pixels`` ``[H, W, C]`` resized to ``[height, width, C]`` by area averaging, FP32
    (see :func:`area_sample`)."""
    rows, cols = int(pixels.shape[0]), int(pixels.shape[1])
    return area_sample(integral(pixels), (0, 0, rows, cols), height, width)


def pyramid_scales(height: int, width: int, min_size: float, factor: float, cell: int) -> list:
    """MTCNN's scales: ``cell / min_size``, then ``factor`` times smaller while the shorter
    side at that scale is at least ``cell``."""
    if not 0 < factor < 1:
        raise InvalidModelConfig(f"parameter factor must lie between 0 and 1, got {factor}")
    scale = cell / min_size
    shorter = min(height, width) * scale
    scales = []
    while shorter >= cell:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def pack(sizes: Sequence[tuple[int, int]], gap: int, align: int) -> tuple[list, int, int]:
    """Shelf packing of ``(width, height)`` rectangles, largest first: each one's top-left
    ``(x, y)``, and the canvas width and height.

    Rows are as wide as the first two rectangles side by side; offsets are multiples of
    ``align``, with at least ``gap`` pixels between neighbours.
    """

    def up(v: int) -> int:
        return -(-v // align) * align

    if not sizes:
        return [], 0, 0
    limit = sizes[0][0] + (gap + sizes[1][0] if len(sizes) > 1 else 0)
    places: list[tuple[int, int]] = []
    x = y = row_height = 0
    for w, h in sizes:
        if x > 0 and x + w > limit:
            x, y, row_height = 0, up(y + row_height + gap), 0
        places.append((x, y))
        row_height = max(row_height, h)
        x = up(x + w + gap)
    width = max(px + w for (px, _), (w, _) in zip(places, sizes, strict=True))
    height = max(py + h for (_, py), (_, h) in zip(places, sizes, strict=True))
    return places, width, height


def image_pyramid(
    inputs: Mapping[str, np.ndarray], params: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """``image`` → ``canvas``, ``levels``, ``pixels``; see the module docstring."""
    min_size = number(params, "min_size", 20.0)
    factor = number(params, "factor", 0.709)
    cell = whole(params, "cell", 12)
    stride = whole(params, "stride", 2)
    gap = whole(params, "gap", cell)
    mean = number(params, "mean", 127.5, positive=False)
    scale = number(params, "scale", 0.0078125)
    max_pixels = whole(params, "max_pixels", 40_000_000)
    mask = params.get("mask", "false").strip().lower()
    if mask not in ("true", "false"):
        raise InvalidModelConfig(f"parameter mask must be true or false, got {mask!r}")

    pixels = decode_rgb(inputs, max_pixels)
    h, w = int(pixels.shape[0]), int(pixels.shape[1])
    scales = pyramid_scales(h, w, min_size, factor, cell)
    sizes = [(int(w * s + 1), int(h * s + 1)) for s in scales]
    places, canvas_w, canvas_h = pack(sizes, gap, stride)
    channels = 4 if mask == "true" else 3
    canvas = np.zeros((channels, max(canvas_h, cell), max(canvas_w, cell)), dtype=np.float32)
    levels = np.zeros((len(scales), 5), dtype=np.float32)
    table = integral(pixels)
    for k, (s, (lw, lh), (x, y)) in enumerate(zip(scales, sizes, places, strict=True)):
        level = (area_sample(table, (0, 0, h, w), lh, lw) - np.float32(mean)) * np.float32(scale)
        canvas[:3, y : y + lh, x : x + lw] = level.transpose(2, 0, 1)
        canvas[3:, y : y + lh, x : x + lw] = 1
        levels[k] = (x, y, lw, lh, s)
    return {"canvas": canvas[None], "levels": levels, "pixels": pixels}
