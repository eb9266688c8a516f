"""Unlabelled photos that install with the project's dependencies, augmented into many views.

Fine-tuning a pruned image classifier by distillation needs inputs, not labels: the original
model labels them. No machine here reaches a data hub, so this module gathers every natural
photograph the installed packages ship (searched for: scikit-image, scikit-learn, SciPy,
imageio, Pillow, OpenCV, matplotlib's sample data where installed, Tk's demo images; only the
first two ship any): scikit-image's eighteen (a cat, coffee, a rocket, an astronaut, textures,
micrographs, a retina…; its synthetic images — blobs, checkerboards, phantoms, logos, the colour
wheel, the horse silhouette — are left out), both views of its stereo motorcycle (one photo: one
scene), the 200 crops of its Labeled Faces in the Wild subset (25×25 grey: 100 faces, 100
backgrounds, each half in four photos of 25 crops, so holding out by photo holds out whole
crops; the 16 near-blank background crops are left out), and scikit-learn's two
(``load_sample_images``: a temple and a flower). A *photo* is one name and one or more images of
it; :func:`photo_views` turns them into as many views as asked: a random resized crop (a quarter
of the area up to all of it, aspect 3:4 to 4:3) of one of the photo's images, a horizontal flip
half the time and colour jitter (brightness, contrast, saturation ±30 %), resized to the model's
square input and normalised like its training data; with ``mix``, some views blend two photos of
the same set (mixup: a weighted mean; cutmix: a rectangle of one pasted into the other) — inputs
no photo alone gives, which the teacher labels like any other. Which photos a run trains on and
which it judges on are chosen by name (:func:`split_photos`), so agreement is measured on photos
never trained on.

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
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
_SKLEARN = ("china", "flower")
#: Photos behind a differently shaped loader: name → (function, indices into what it returns).
_SKIMAGE_PARTS = {"motorcycle": ("stereo_motorcycle", (0, 1))}  # both views of a stereo pair
#: ``lfw_subset``: crops 0-99 are faces, 100-199 backgrounds; each half makes this many photos.
_LFW_PHOTOS = 4
#: A crop whose pixels vary less than this (a patch of dark background) shows nothing.
_FLAT = 8.0


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@cache
def _photos() -> dict[str, tuple[np.ndarray, ...]]:
    photos: dict[str, tuple[np.ndarray, ...]] = {}
    try:
        import skimage.data as skdata
    except ImportError:
        skdata = None  # type: ignore[assignment]
    if skdata is not None:
        for name in _SKIMAGE:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                photos[name] = (_rgb(getattr(skdata, name)()),)
        for name, (loader, parts) in _SKIMAGE_PARTS.items():
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = getattr(skdata, loader)()
                photos[name] = tuple(_rgb(found[part]) for part in parts)
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crops = skdata.lfw_subset()
            for kind, half in (("faces", crops[:100]), ("backgrounds", crops[100:200])):
                for k, part in enumerate(np.array_split(half, _LFW_PHOTOS), 1):
                    rgb = (_rgb(crop) for crop in part)
                    photos[f"lfw-{kind}-{k}"] = tuple(c for c in rgb if c.std() >= _FLAT)
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        pass
    else:
        with contextlib.suppress(Exception):
            for name, image in zip(_SKLEARN, load_sample_images().images, strict=True):
                photos[name] = (_rgb(image),)
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
    mix: float = 0.0,
) -> np.ndarray:
    """``count`` augmented views of ``photos`` (all by default), float32 ``[count, 3, size, size]``.

    Each view is ``(pixels - mean) / std`` of a random resized crop, maybe flipped, with
    colour jitter (see the module docstring); the photos take turns, so every photo gives
    ``count / len(photos)`` views, give or take one. A share ``mix`` of the views (0 to 1)
    is then mixed with a view of another of ``photos`` (mixup or cutmix, half each). Seeded:
    the same arguments give the same views.
    """
    if count < 1 or size < 8:
        raise InvalidArgument(f"need count >= 1 and size >= 8 (got {count}, {size})")
    if not 0.0 <= mix <= 1.0:
        raise InvalidArgument(f"mix is a share of the views, from 0 to 1, not {mix}")
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
        view = _view(every[names[i % len(names)]], size, rng)
        if mix > 0 and len(names) > 1 and rng.random() < mix:
            other = names[(i + int(rng.integers(1, len(names)))) % len(names)]
            second = _view(every[other], size, rng)
            if rng.random() < 0.5:
                weight = rng.uniform(0.3, 0.7)
                view = weight * view + (1 - weight) * second
            else:
                side = int(size * np.sqrt(rng.uniform(0.2, 0.5)))
                top, left = rng.integers(0, size - side + 1, 2)
                view[top : top + side, left : left + side] = second[
                    top : top + side, left : left + side
                ]
        out[i] = ((view - mean) / std).transpose(2, 0, 1)
    return out


def _view(images: Sequence[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """A random resized crop of one of ``images``, maybe flipped, colour-jittered.

    Float ``[size, size, 3]``. A photo of one image draws no index (the random stream, and so
    every view, stays what it was before photos could hold several images).
    """
    from PIL import Image

    image = images[int(rng.integers(len(images)))] if len(images) > 1 else images[0]
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
    return np.clip(view, 0, 255)
