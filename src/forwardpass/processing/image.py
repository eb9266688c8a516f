"""Image files → input tensors laid out as a model's config declares.

The layout is read off the input's dims: ``[C,H,W]`` (C of 1 or 3), ``[H,W,C]`` or ``[H,W]``.
Pixels are scaled to [0, 1]. Model parameters refine it:

- ``image_invert``: ``true``, ``false`` or ``auto`` (invert when the picture is mostly light, for
  models trained on light ink on a dark ground, like scikit-learn's digits);
- ``image_resample``: ``box`` (area average, right for heavy downscaling), ``bilinear``, ``bicubic``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from forwardpass.errors import InvalidArgument
from forwardpass.model_config import TensorSpec

__all__ = ["IMAGE_SUFFIXES", "image_layout", "load_image"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_layout(dims: tuple[int, ...]) -> tuple[str, int, int, int]:
    """(layout, channels, height, width) for an image input's dims (batch excluded)."""
    if len(dims) == 2 and all(d > 0 for d in dims):
        return "HW", 1, dims[0], dims[1]
    if len(dims) == 3:
        if dims[0] in (1, 3) and dims[1] > 0 and dims[2] > 0:
            return "CHW", dims[0], dims[1], dims[2]
        if dims[2] in (1, 3) and dims[0] > 0 and dims[1] > 0:
            return "HWC", dims[2], dims[0], dims[1]
    raise InvalidArgument(
        f"cannot feed an image to an input of dims {list(dims)}: expected [C,H,W], [H,W,C] or "
        "[H,W] with fixed sizes"
    )


def load_image(path: Path, spec: TensorSpec, params: Mapping[str, str] | None = None) -> np.ndarray:
    """Decode ``path`` and return a float array shaped ``spec.dims`` (no batch dimension)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    params = params or {}
    layout, channels, height, width = image_layout(spec.dims)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("L" if channels == 1 else "RGB")
            resample = {
                "box": Image.Resampling.BOX,
                "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC,
            }.get(params.get("image_resample", "box"), Image.Resampling.BOX)
            img = img.resize((width, height), resample)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidArgument(f"cannot decode image {path}: {exc}") from None
    invert = params.get("image_invert", "false").lower()
    if invert == "true" or (invert == "auto" and float(pixels.mean()) > 0.5):
        pixels = 1.0 - pixels
    if channels == 1:
        pixels = pixels.reshape(height, width, 1)
    if layout == "CHW":
        pixels = pixels.transpose(2, 0, 1)
    elif layout == "HW":
        pixels = pixels.reshape(height, width)
    return np.ascontiguousarray(pixels, dtype=spec.datatype.numpy)
