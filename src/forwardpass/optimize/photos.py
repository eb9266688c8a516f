"""Unlabelled photos that install with the project's dependencies, augmented into many views.

Fine-tuning a pruned image classifier by distillation needs inputs, not labels: the original
model labels them. No machine here reaches a data hub, but scikit-image ships about twenty
real photographs (a cat, coffee, a rocket, an astronaut, textures, micrographs…) and
scikit-learn two more (``load_sample_images``: a temple and a flower). :func:`photo_views`
turns them into as many views as asked: a random resized crop (a quarter of the area up to
all of it, aspect 3:4 to 4:3), a horizontal flip half the time and colour jitter
(brightness, contrast, saturation ±30 %), resized to the model's square input and normalised
like its training data. Which photos a run trains on and which it judges on are chosen by
name (:func:`split_photos`), so agreement is measured on photos never trained on.

Needs scikit-image, scikit-learn and Pillow; a photo that a package no longer ships (or would
download) is left out, and :func:`available_photos` says which remain.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from functools import cache

import numpy as np

from forwardpass.errors import InvalidArgument, Unsupported

__all__ = ["available_photos", "photo_views", "split_photos"]

#: scikit-image's photographs (its synthetic images — blobs, checkerboards, phantoms,
#: logos — are left out: a classifier has nothing to say about them).
_SKIMAGE = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
_SKLEARN = ("china", "flower")


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@cache
def _photos() -> dict[str, np.ndarray]:
    photos: dict[str, np.ndarray] = {}
    try:
        import skimage.data as skdata
    except ImportError:
        skdata = None  # type: ignore[assignment]
    if skdata is not None:
        for name in _SKIMAGE:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                photos[name] = _rgb(getattr(skdata, name)())
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        pass
    else:
        with contextlib.suppress(Exception):
            for name, image in zip(_SKLEARN, load_sample_images().images, strict=True):
                photos[name] = _rgb(image)
    return photos


def available_photos() -> tuple[str, ...]:
    """Names of the photos this installation ships, sorted."""
    return tuple(sorted(_photos()))


def split_photos(every: int = 4) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training photos, held-out photos): every ``every``-th photo by name is held out."""
    if every < 2:
        raise InvalidArgument(f"every must be at least 2, not {every}")
    names = available_photos()
    held = names[every - 1 :: every]
    return tuple(n for n in names if n not in held), held


def photo_views(
    count: int,
    *,
    size: int = 224,
    photos: Sequence[str] | None = None,
    mean: float = 127.0,
    std: float = 128.0,
    seed: int = 0,
) -> np.ndarray:
    """``count`` augmented views of ``photos`` (all by default), float32 ``[count, 3, size, size]``.

    Each view is ``(pixels - mean) / std`` of a random resized crop, maybe flipped, with
    colour jitter (see the module docstring); the photos take turns, so every photo gives
    ``count / len(photos)`` views, give or take one. Seeded: the same arguments give the same
    views.
    """
    from PIL import Image

    if count < 1 or size < 8:
        raise InvalidArgument(f"need count >= 1 and size >= 8 (got {count}, {size})")
    every = _photos()
    names = list(available_photos() if photos is None else photos)
    unknown = [n for n in names if n not in every]
    if unknown:
        raise InvalidArgument(
            f"no photo {unknown}; this installation ships {', '.join(available_photos())}"
        )
    if not names:
        raise Unsupported("no photos: install scikit-image or scikit-learn")
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        image = every[names[i % len(names)]]
        h, w = image.shape[:2]
        area = h * w * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
        cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(image[top : top + ch, left : left + cw])
        view = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), np.float32)
        if rng.random() < 0.5:
            view = view[:, ::-1]
        brightness, contrast, saturation = rng.uniform(0.7, 1.3, 3)
        view = view * brightness
        view = (view - view.mean()) * contrast + view.mean()
        grey = view.mean(axis=2, keepdims=True)
        view = (view - grey) * saturation + grey
        view = np.clip(view, 0, 255)
        out[i] = ((view - mean) / std).transpose(2, 0, 1)
    return out
