"""Image files → input tensors laid out as a model's config declares.

The layout is read off the input's dims: ``[C,H,W]`` (C of 1 or 3), ``[H,W,C]`` or ``[H,W]``.
Pixels are scaled to [0, 1]. Model parameters refine it:

- ``image_invert``: ``true``, ``false`` or ``auto`` (invert when the picture is mostly light, for
  models trained on light ink on a dark ground, like scikit-learn's digits);
- ``image_resample``: ``box`` (area average, right for heavy downscaling), ``bilinear`` or
  ``bicubic``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import TensorSpec
from forwardpass.processing.base import InputProcessor

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInput",
    "geometry_key",
    "image_layout",
    "load_image",
    "undecodable",
]

#: Leading bytes of the formats Pillow is most often sent.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"),
)
#: A Python object's repr as foreign messages carry it (Pillow: "cannot identify image file
#: <_io.BytesIO object at 0x7f…>"): it tells a client nothing.
_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _format(head: bytes) -> str | None:
    return next((name for sig, name in _SIGNATURES if head.startswith(sig)), None)


def undecodable(blob: bytes | bytearray, exc: BaseException) -> str:
    """Why ``blob`` is not a picture, in words a client can act on (no Python reprs).

    Base64 text of an image (what a JSON BYTES string often carries) gets a hint of its own.
    """
    head = bytes(blob[:96]).strip()
    if head.startswith(b"data:") and b";base64," in head:
        head = head.split(b";base64,", 1)[1]
        kind = "a data: URL (base64 text)"
    else:
        kind = "base64 text"
    try:
        decoded = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    encoded = _format(decoded)
    if encoded is not None:
        return (
            f"the {len(blob)} bytes are {kind} of a {encoded} image, not the image itself: "
            "image bytes go raw, as they are in the file — in a binary tensor (the binary "
            "data extension: tritonclient's set_data_from_numpy(..., binary_data=True)), "
            "not base64 in a JSON string"
        )
    detail = _REPR.sub("", str(exc)).strip().rstrip(":")
    found = _format(bytes(blob[:16]))
    if found is not None:
        return (
            f"a {found} image of {len(blob)} bytes that cannot be decoded "
            f"(truncated or corrupt: {detail})"
        )
    return (
        f"{len(blob)} bytes that are not an image in a format Pillow reads (PNG, JPEG, GIF, "
        f"BMP, TIFF, WebP…); they begin {bytes(blob[:8]).hex(' ')}"
    )


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
        with Image.open(path) as source:
            img = ImageOps.exif_transpose(source) or source
            img = img.convert("L" if channels == 1 else "RGB")
            resample = {
                "box": Image.Resampling.BOX,
                "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC,
            }.get(params.get("image_resample", "box"), Image.Resampling.BOX)
            img = img.resize((width, height), resample)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        try:
            head = path.read_bytes()
        except OSError:
            raise InvalidArgument(
                f"cannot decode image {path}: cannot read it ({exc.strerror or exc})"
            ) from None
        raise InvalidArgument(f"cannot decode image {path}: {undecodable(head, exc)}") from None
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


# --------------------------------------------------------------------------- served images
def geometry_key(name: str) -> str:
    """The name under which an image input passes its pictures' geometry to output steps.

    A float32 [N, 6] array: ``(sx, sy, ox, oy, width, height)`` with model-input coordinates
    ``x' = x * sx + ox``, ``y' = y * sy + oy`` for a point ``(x, y)`` of the upright picture
    of ``width`` × ``height`` pixels. The engine never sends it to the model.
    """
    return f"{name}@geometry"


class _Affine:
    """Scale-and-shift from picture pixels to model-input pixels, built step by step."""

    __slots__ = ("ox", "oy", "sx", "sy")

    def __init__(self, sx: float, sy: float) -> None:
        self.sx, self.sy, self.ox, self.oy = sx, sy, 0.0, 0.0

    def scale(self, fx: float, fy: float) -> None:
        self.sx *= fx
        self.ox *= fx
        self.sy *= fy
        self.oy *= fy

    def shift(self, dx: float, dy: float) -> None:
        self.ox += dx
        self.oy += dy

    def values(self) -> tuple[float, float, float, float]:
        return self.sx, self.sy, self.ox, self.oy


_RESAMPLE = ("nearest", "box", "bilinear", "bicubic", "lanczos")


class ImageInput(InputProcessor):
    """Encoded images (BYTES, one per row) → a float tensor laid out as the model expects.

    Options (all optional): ``color`` (RGB, BGR or L; default from the channel count),
    ``resize`` (``{shorter: N}``, ``{size: [H, W]}`` or ``{letterbox: [H, W], fill: 114}``),
    ``resample``, ``crop`` ([H, W], centred), ``scale`` (pixel multiplier, default 1/255),
    ``mean`` / ``std`` (per channel, after scaling), ``invert`` (true, false, auto),
    ``decoder`` (``pil``, the default, or ``opencv``: several times faster at decoding and
    resizing; its cubic/linear resize does not low-pass a downscale under 2×, where Pillow's
    does, so pixels differ slightly — choose it where preprocessing time matters).
    The final size must equal the model input's H×W.
    """

    def __init__(
        self, name: str, target: TensorSpec, batching: bool, options: Mapping[str, Any]
    ) -> None:
        from forwardpass.datatypes import DataType

        self.inputs = (
            TensorSpec(name=name, datatype=DataType.BYTES, dims=(1,) if batching else (-1,)),
        )
        self.targets = (target.name,)
        self.target = target
        self.batching = batching
        layout, channels, height, width = image_layout(target.dims)
        self.layout, self.channels, self.height, self.width = layout, channels, height, width
        opts = dict(options)
        self.color = str(opts.pop("color", "L" if channels == 1 else "RGB")).upper()
        if self.color not in ("RGB", "BGR", "L") or (self.color == "L") != (channels == 1):
            raise InvalidArgument(
                f"image input {name!r}: color {self.color} does not fit {channels} channel(s)"
            )
        self.resize = opts.pop("resize", None)
        self.resample = str(opts.pop("resample", "bilinear")).lower()
        if self.resample not in _RESAMPLE:
            raise InvalidArgument(f"image input {name!r}: resample must be one of {_RESAMPLE}")
        crop = opts.pop("crop", None)
        self.crop = tuple(int(c) for c in crop) if crop else None
        self.scale = float(opts.pop("scale", 1 / 255))
        self.mean = np.asarray(opts.pop("mean", 0.0), dtype=np.float32).reshape(-1)
        self.std = np.asarray(opts.pop("std", 1.0), dtype=np.float32).reshape(-1)
        if np.any(self.std == 0):
            raise InvalidArgument(f"image input {name!r}: std must not be 0")
        for value, what in ((self.mean, "mean"), (self.std, "std")):
            if value.size not in (1, channels):
                raise InvalidArgument(f"image input {name!r}: {what} needs 1 or {channels} values")
        self.invert = str(opts.pop("invert", "false")).lower()
        self.decoder = str(opts.pop("decoder", "pil")).lower()
        if self.decoder not in ("pil", "opencv"):
            raise InvalidArgument(f"image input {name!r}: decoder must be pil or opencv")
        if self.decoder == "opencv":
            try:
                import cv2
            except ImportError:
                raise InvalidModelConfig(
                    f"image input {name!r}: decoder opencv needs OpenCV: "
                    "pip install opencv-python-headless"
                ) from None
            self._cv2 = cv2
        if opts:
            raise InvalidArgument(f"image input {name!r}: unknown option(s) {sorted(opts)}")
        self._check_geometry(name)
        gain = np.broadcast_to(np.float32(self.scale) / self.std, (channels,)).astype(np.float32)
        bias = np.broadcast_to(-self.mean / self.std, (channels,)).astype(np.float32)
        if self.layout == "CHW":
            gain, bias = gain[:, None, None], bias[:, None, None]
        elif self.layout == "HW":
            gain, bias = gain[:1].reshape(()), bias[:1].reshape(())
        self._gain, self._bias = gain, bias

    def _check_geometry(self, name: str) -> None:
        resize = self.resize
        if resize is not None and not (
            isinstance(resize, Mapping)
            and len(resize) in (1, 2)
            and ("shorter" in resize or "size" in resize or "letterbox" in resize)
        ):
            raise InvalidArgument(
                f"image input {name!r}: resize must be {{shorter: N}}, {{size: [H, W]}} or "
                "{letterbox: [H, W]}"
            )
        final = self.crop or (
            tuple(resize.get("size") or resize.get("letterbox") or ()) if resize else ()
        )
        if final and tuple(final) != (self.height, self.width):
            raise InvalidArgument(
                f"image input {name!r}: processing ends at {list(final)} but model input "
                f"{self.target.name!r} is {self.height}x{self.width}"
            )

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (spec,) = self.inputs
        data = arrays[spec.name].reshape(-1)
        # Each image is written straight into its slice of the batch: no per-image float
        # temporaries, no stacking copy.
        batch = np.empty((len(data), *self.target.dims), dtype=self.target.datatype.numpy)
        geometry = np.empty((len(data), 6), dtype=np.float32)
        for i, item in enumerate(data):
            self._one(item, i, batch[i], geometry[i])
        # Not a model input: how each picture maps into the model input, for output steps
        # that give coordinates back in the picture's own pixels (see ``geometry_key``).
        extra = {geometry_key(spec.name): geometry}
        if not self.batching and len(data) == 1:
            return {self.target.name: batch[0], **extra}
        return {self.target.name: batch, **extra}

    def _one(self, blob: object, index: int, out: np.ndarray, geometry: np.ndarray) -> None:
        from PIL import Image, ImageOps, UnidentifiedImageError

        if not isinstance(blob, bytes | bytearray) or not blob:
            raise InvalidArgument(f"input {self.inputs[0].name!r}[{index}]: empty image")
        if self.decoder == "opencv":
            pixels = self._decode_opencv(blob, index, geometry)
            self._finish(pixels, out)
            return
        try:
            with Image.open(io.BytesIO(blob)) as source:
                full = source.size
                if source.format == "JPEG" and self.resize:
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (an averaging, so a clean
                    # downscale) while the picture stays at least as large as the resize needs.
                    ratio = self._decode_ratio(*full)
                    w, h = full
                    if ratio < 1.0:
                        source.draft(
                            "RGB" if self.channels == 3 else "L",
                            (math.ceil(w * ratio), math.ceil(h * ratio)),
                        )
                decoded = source.size
                img = ImageOps.exif_transpose(source) or source
                # The picture's own frame: upright, full size (before any reduced decoding).
                turned = img.size != decoded
                shown = (full[1], full[0]) if turned else full
                affine = _Affine(img.size[0] / shown[0], img.size[1] / shown[1])
                mode = "L" if self.channels == 1 else "RGB"
                if img.mode != mode:
                    img = img.convert(mode)
                img = self._geometry(img, affine)
                pixels = np.asarray(img)
                geometry[:] = (*affine.values(), *shown)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InvalidArgument(
                f"input {self.inputs[0].name!r}[{index}]: cannot decode image: "
                f"{undecodable(blob, exc)}"
            ) from None
        self._finish(pixels, out)

    def _finish(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """uint8 pixels (H, W[, C], RGB or L) → normalised values in ``out``."""
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.color == "BGR":
            pixels = pixels[:, :, ::-1]
        if self.invert == "true" or (self.invert == "auto" and float(pixels.mean()) > 127.5):
            pixels = 255 - pixels
        if self.layout == "CHW":
            view = pixels.transpose(2, 0, 1)
        elif self.layout == "HW":
            view = pixels[:, :, 0]
        else:
            view = pixels
        # (pixel * scale - mean) / std as one multiply-add into the output slice.
        np.multiply(view, self._gain, out=out, casting="unsafe")
        out += self._bias

    def _decode_ratio(self, w: int, h: int) -> float:
        """The smallest scale of a w×h picture the resize step still reads at full detail.

        Taken over both orientations, since EXIF may rotate the picture after decoding.
        """
        resize = self.resize or {}
        if "shorter" in resize:
            return int(resize["shorter"]) / min(w, h)
        size = resize.get("size") or resize.get("letterbox")
        if not size:
            return 1.0
        th, tw = (int(v) for v in size)
        upright = max(tw / w, th / h) if "size" in resize else min(tw / w, th / h)
        turned = max(tw / h, th / w) if "size" in resize else min(tw / h, th / w)
        return max(upright, turned)

    def _decode_opencv(
        self, blob: bytes | bytearray, index: int, geometry: np.ndarray
    ) -> np.ndarray:
        """Decode (EXIF orientation applied), resize and crop with OpenCV; RGB or L out."""
        cv2 = self._cv2
        flag = cv2.IMREAD_GRAYSCALE if self.channels == 1 else cv2.IMREAD_COLOR
        img = cv2.imdecode(np.frombuffer(blob, np.uint8), flag)
        if img is None:
            raise InvalidArgument(
                f"input {self.inputs[0].name!r}[{index}]: cannot decode image (OpenCV): "
                f"{undecodable(blob, ValueError('not a format OpenCV reads, or truncated'))}"
            )
        if img.ndim == 3:
            img = img[:, :, ::-1]  # OpenCV decodes to BGR
        h, w = img.shape[:2]
        shown = (w, h)  # imdecode has applied the EXIF orientation already
        affine = _Affine(1.0, 1.0)
        resize = self.resize

        def scaled(width: int, height: int, src: np.ndarray) -> np.ndarray:
            sh, sw = src.shape[:2]
            affine.scale(width / sw, height / sh)
            if width * 2 <= sw and height * 2 <= sh:
                method = cv2.INTER_AREA  # a real low-pass for strong downscaling
            else:
                method = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}.get(
                    self.resample, cv2.INTER_CUBIC
                )
            return np.ascontiguousarray(cv2.resize(src, (width, height), interpolation=method))

        if resize and "shorter" in resize:
            ratio = int(resize["shorter"]) / min(w, h)
            img = scaled(max(1, round(w * ratio)), max(1, round(h * ratio)), img)
        elif resize and "size" in resize:
            rh, rw = (int(v) for v in resize["size"])
            img = scaled(rw, rh, img)
        elif resize:
            lh, lw = (int(v) for v in resize["letterbox"])
            fill = int(resize.get("fill", 114))
            scale = min(lw / w, lh / h)
            iw, ih = max(1, round(w * scale)), max(1, round(h * scale))
            canvas = np.full((lh, lw, *img.shape[2:]), fill, dtype=np.uint8)
            top, left = (lh - ih) // 2, (lw - iw) // 2
            canvas[top : top + ih, left : left + iw] = scaled(iw, ih, img)
            affine.shift(left, top)
            img = canvas
        if self.crop:
            ch, cw = self.crop
            h, w = img.shape[:2]
            if w < cw or h < ch:
                raise InvalidArgument(f"image is {w}x{h} after resizing, smaller than the crop")
            top, left = (h - ch) // 2, (w - cw) // 2
            img = img[top : top + ch, left : left + cw]
            affine.shift(-left, -top)
        if img.shape[:2] != (self.height, self.width):
            img = scaled(self.width, self.height, img)
        geometry[:] = (*affine.values(), *shown)
        return img

    def _geometry(self, img: Any, affine: _Affine) -> Any:
        from PIL import Image

        method = getattr(Image.Resampling, self.resample.upper())
        resize = self.resize
        w, h = img.size
        if resize and self.crop and ("shorter" in resize or "size" in resize):
            # Resize only the region the centre crop keeps: the same pixels as resizing the
            # whole picture and cropping, for half the work or less.
            if "shorter" in resize:
                rx = ry = int(resize["shorter"]) / min(w, h)
                rw, rh = max(1, round(w * rx)), max(1, round(h * ry))
            else:
                rh, rw = (int(v) for v in resize["size"])
                rx, ry = rw / w, rh / h
            ch, cw = self.crop
            if rw < cw or rh < ch:
                raise InvalidArgument(
                    f"image is {rw}x{rh} after resizing, smaller than the {cw}x{ch} crop"
                )
            left, top = (rw - cw) // 2, (rh - ch) // 2
            box = (left / rx, top / ry, (left + cw) / rx, (top + ch) / ry)
            img = img.resize((cw, ch), method, box=box, reducing_gap=3.0)
            affine.scale(rx, ry)
            affine.shift(-left, -top)
        elif resize:
            if "shorter" in resize:
                ratio = int(resize["shorter"]) / min(w, h)
                size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
                img = img.resize(size, method, reducing_gap=3.0)
                affine.scale(size[0] / w, size[1] / h)
            elif "size" in resize:
                rh, rw = (int(v) for v in resize["size"])
                img = img.resize((rw, rh), method, reducing_gap=3.0)
                affine.scale(rw / w, rh / h)
            else:
                lh, lw = (int(v) for v in resize["letterbox"])
                fill = int(resize.get("fill", 114))
                scale = min(lw / w, lh / h)
                inner = (max(1, round(w * scale)), max(1, round(h * scale)))
                canvas = Image.new(
                    img.mode, (lw, lh), (fill,) * len(img.mode) if len(img.mode) > 1 else fill
                )
                canvas.paste(
                    img.resize(inner, method, reducing_gap=3.0),
                    ((lw - inner[0]) // 2, (lh - inner[1]) // 2),
                )
                img = canvas
                affine.scale(inner[0] / w, inner[1] / h)
                affine.shift((lw - inner[0]) // 2, (lh - inner[1]) // 2)
        elif self.crop:
            ch, cw = self.crop
            if w < cw or h < ch:
                raise InvalidArgument(f"image is {w}x{h}, smaller than the {cw}x{ch} crop")
            left, top = (w - cw) // 2, (h - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
            affine.shift(-left, -top)
        if img.size != (self.width, self.height):
            affine.scale(self.width / img.size[0], self.height / img.size[1])
            img = img.resize((self.width, self.height), method)
        return img
