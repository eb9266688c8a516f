"""Run an edge bundle: the model in ORT format, its pre- and post-processing, one file.

This module is copied verbatim into every bundle ``forwardpass export --edge`` writes. It
needs only numpy and onnxruntime (Pillow for image inputs) and never imports forwardpass.
It reads ``bundle.json`` beside it (or in the folder given), which names the model file, the
model's tensors, its processing declaration and its labels.

Use it as a function::

    import runner
    answers = runner.predict({"image": "cat.png"})      # or runner.predict("cat.png")

or from the command line (one JSON line per input; ``--repeat N`` times N more rounds)::

    python runner.py picture.png batch.npy request.json

Inputs: an image file (for an image input, raw or declared by the processing), ``.npy`` (one
tensor), or ``.json`` (an object of input name → nested list). The processing steps it applies
are the server's: image decoding (Pillow), resize (shorter side, size, letterbox), centre crop,
scale / mean / std, colour order, invert and layout; text inputs whose ``tokenizer.json`` is a
BERT WordPiece tokenizer (BERT normalizer and pre-tokenizer, WordPiece model, ``[CLS] A [SEP]``
template), tokenized here in plain Python exactly as the ``tokenizers`` library does it; output
steps softmax, sigmoid, l2_normalize, mean_pool, argmax, label, topk and threshold. A bundle
whose model declares other steps (other tokenizers, tabular or audio inputs, CTC or NMS
decoding) is written only with ``--raw``: its runner then takes and returns the model's own
tensors.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Bundle", "BundleError", "load", "main", "predict"]

#: What each V2 datatype is in numpy (BYTES: object arrays of ``bytes``).
_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: Output steps this runner applies (the server's of the same name).
OUTPUT_STEPS = frozenset(
    {"softmax", "sigmoid", "l2_normalize", "mean_pool", "argmax", "label", "topk", "threshold"}
)
INPUT_KINDS = frozenset({"image", "text"})


class BundleError(Exception):
    """A bundle that cannot be loaded, or an input that does not fit it."""


# --------------------------------------------------------------------------- images
def _layout(dims: Sequence[int]) -> tuple[str, int, int, int]:
    """(layout, channels, height, width) of an image input's dims (no batch dimension)."""
    d = list(dims)
    if len(d) == 2 and all(x > 0 for x in d):
        return "HW", 1, d[0], d[1]
    if len(d) == 3:
        if d[0] in (1, 3) and d[1] > 0 and d[2] > 0:
            return "CHW", d[0], d[1], d[2]
        if d[2] in (1, 3) and d[0] > 0 and d[1] > 0:
            return "HWC", d[2], d[0], d[1]
    raise BundleError(f"cannot feed an image to an input of dims {d}")


def _read(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str | Path):
        try:
            return Path(item).read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {item}: {exc.strerror or exc}") from None
    raise BundleError(f"an image is bytes or a file path, got {type(item).__name__}")


def plain_image(blob: bytes, dtype: Any, dims: Sequence[int], params: Mapping[str, str]) -> Any:
    """An image file → an input of ``dims``, as ``forwardpass predict`` feeds a model that
    takes pixels in [0, 1] (parameters ``image_invert`` and ``image_resample``)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    layout, channels, height, width = _layout(dims)
    resample = {
        "box": Image.Resampling.BOX,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }.get(params.get("image_resample", "box"), Image.Resampling.BOX)
    try:
        with Image.open(io.BytesIO(blob)) as source:
            img = ImageOps.exif_transpose(source) or source
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height), resample)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise BundleError(f"cannot decode image: {exc}") from None
    invert = params.get("image_invert", "false").lower()
    if invert == "true" or (invert == "auto" and float(pixels.mean()) > 0.5):
        pixels = 1.0 - pixels
    if channels == 1:
        pixels = pixels.reshape(height, width, 1)
    if layout == "CHW":
        pixels = pixels.transpose(2, 0, 1)
    elif layout == "HW":
        pixels = pixels.reshape(height, width)
    return np.ascontiguousarray(pixels, dtype=dtype)


class ImageStep:
    """A declared ``kind: image`` input: encoded pictures → the model input (Pillow path)."""

    def __init__(self, options: Mapping[str, Any], target: Mapping[str, Any]) -> None:
        opts = dict(options)
        self.name = str(opts.pop("name"))
        self.target = str(opts.pop("to"))
        opts.pop("kind", None)
        self.dtype = _NUMPY[target["datatype"]]
        self.dims = tuple(target["dims"])
        layout, channels, height, width = _layout(self.dims)
        self.layout, self.channels, self.height, self.width = layout, channels, height, width
        self.color = str(opts.pop("color", "L" if channels == 1 else "RGB")).upper()
        self.resize = opts.pop("resize", None)
        self.resample = str(opts.pop("resample", "bilinear")).lower()
        crop = opts.pop("crop", None)
        self.crop = tuple(int(c) for c in crop) if crop else None
        scale = float(opts.pop("scale", 1 / 255))
        mean = np.asarray(opts.pop("mean", 0.0), dtype=np.float32).reshape(-1)
        std = np.asarray(opts.pop("std", 1.0), dtype=np.float32).reshape(-1)
        self.invert = str(opts.pop("invert", "false")).lower()
        decoder = str(opts.pop("decoder", "pil")).lower()
        if decoder != "pil" or opts:
            raise BundleError(f"image input {self.name!r}: options this runner lacks: {opts}")
        gain = np.broadcast_to(np.float32(scale) / std, (channels,)).astype(np.float32)
        bias = np.broadcast_to(-mean / std, (channels,)).astype(np.float32)
        if layout == "CHW":
            gain, bias = gain[:, None, None], bias[:, None, None]
        elif layout == "HW":
            gain, bias = gain[:1].reshape(()), bias[:1].reshape(())
        self.gain, self.bias = gain, bias

    def __call__(self, items: Sequence[Any]) -> Any:
        batch = np.empty((len(items), *self.dims), dtype=self.dtype)
        for i, item in enumerate(items):
            self._one(_read(item), batch[i])
        return batch

    def _one(self, blob: bytes, out: Any) -> None:
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(blob)) as source:
                if source.format == "JPEG" and self.resize:
                    # The server lets libjpeg decode at a reduced scale; so must we, for the
                    # same pixels.
                    ratio = self._decode_ratio(*source.size)
                    w, h = source.size
                    if ratio < 1.0:
                        source.draft(
                            "RGB" if self.channels == 3 else "L",
                            (math.ceil(w * ratio), math.ceil(h * ratio)),
                        )
                img = ImageOps.exif_transpose(source) or source
                mode = "L" if self.channels == 1 else "RGB"
                if img.mode != mode:
                    img = img.convert(mode)
                pixels = np.asarray(self._geometry(img))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BundleError(f"input {self.name!r}: cannot decode image: {exc}") from None
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
        np.multiply(view, self.gain, out=out, casting="unsafe")
        out += self.bias

    def _decode_ratio(self, w: int, h: int) -> float:
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

    def _geometry(self, img: Any) -> Any:
        from PIL import Image

        method = getattr(Image.Resampling, self.resample.upper())
        resize = self.resize
        w, h = img.size
        if resize and self.crop and ("shorter" in resize or "size" in resize):
            if "shorter" in resize:
                rx = ry = int(resize["shorter"]) / min(w, h)
                rw, rh = max(1, round(w * rx)), max(1, round(h * ry))
            else:
                rh, rw = (int(v) for v in resize["size"])
                rx, ry = rw / w, rh / h
            ch, cw = self.crop
            if rw < cw or rh < ch:
                raise BundleError(f"image is {rw}x{rh} after resizing, smaller than the crop")
            left, top = (rw - cw) // 2, (rh - ch) // 2
            box = (left / rx, top / ry, (left + cw) / rx, (top + ch) / ry)
            img = img.resize((cw, ch), method, box=box, reducing_gap=3.0)
        elif resize:
            if "shorter" in resize:
                ratio = int(resize["shorter"]) / min(w, h)
                size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
                img = img.resize(size, method, reducing_gap=3.0)
            elif "size" in resize:
                rh, rw = (int(v) for v in resize["size"])
                img = img.resize((rw, rh), method, reducing_gap=3.0)
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
        elif self.crop:
            ch, cw = self.crop
            if w < cw or h < ch:
                raise BundleError(f"image is {w}x{h}, smaller than the {cw}x{ch} crop")
            left, top = (w - cw) // 2, (h - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), method)
        return img


# --------------------------------------------------------------------------- text
#: CJK ideograph blocks BERT's normalizer surrounds with spaces.
_CJK = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip
#: Classes the clean-up drops (unassigned characters stay, as in the library).
_CONTROL = frozenset({"Cc", "Cf", "Co", "Cs"})
#: Unicode's White_Space property (what ``char::is_whitespace`` tests in the tokenizers library).
_WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def wordpiece_problems(tokenizer: Mapping[str, Any]) -> list[str]:
    """What in a ``tokenizer.json`` document this runner's WordPiece tokenizer does not do."""
    problems = []
    normalizer = tokenizer.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        problems.append(f"normalizer {normalizer.get('type')!r} (BertNormalizer only)")
    pre = tokenizer.get("pre_tokenizer") or {}
    if pre.get("type") != "BertPreTokenizer":
        problems.append(f"pre-tokenizer {pre.get('type')!r} (BertPreTokenizer only)")
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece":
        problems.append(f"model {model.get('type')!r} (WordPiece only)")
    post = tokenizer.get("post_processor") or {}
    if post.get("type") not in ("TemplateProcessing", "BertProcessing"):
        problems.append(f"post-processor {post.get('type')!r}")
    elif post.get("type") == "TemplateProcessing":
        pieces = post.get("single") or []
        if sum(1 for piece in pieces if "Sequence" in piece) != 1:
            problems.append("a template without exactly one sequence")
    for token in tokenizer.get("added_tokens") or []:
        if token.get("normalized") or token.get("lstrip") or token.get("rstrip"):
            problems.append(f"added token {token.get('content')!r} with normalized/strip options")
        elif token.get("single_word"):
            problems.append(f"added token {token.get('content')!r} with single_word")
    return problems


class WordPiece:
    """A BERT tokenizer.json in plain Python: text → token ids and type ids, with special tokens.

    The steps and their order are the ``tokenizers`` library's: added tokens split out of the
    raw text; clean-up (NUL, U+FFFD and control characters dropped, whitespace made a space),
    spaces around CJK ideographs, accents stripped (NFD, marks dropped) when asked or when
    lowercasing without a choice, lowercase; split on whitespace and around punctuation;
    greedy longest-match WordPiece with the continuing prefix; truncation to ``max_length``
    counting the special tokens; the template's special tokens around the sequence.
    Character classes come from Python's ``unicodedata``; the library's tables are of another
    Unicode version, so a character whose class changed between the two may be treated apart.
    """

    def __init__(self, tokenizer: Mapping[str, Any]) -> None:
        problems = wordpiece_problems(tokenizer)
        if problems:
            raise BundleError(f"tokenizer: not a BERT WordPiece tokenizer: {'; '.join(problems)}")
        normalizer = tokenizer["normalizer"]
        self.clean = bool(normalizer.get("clean_text", True))
        self.cjk = bool(normalizer.get("handle_chinese_chars", True))
        self.lowercase = bool(normalizer.get("lowercase", True))
        strip = normalizer.get("strip_accents")
        self.strip_accents = self.lowercase if strip is None else bool(strip)
        model = tokenizer["model"]
        self.vocab: dict[str, int] = dict(model["vocab"])
        self.unk = str(model.get("unk_token", "[UNK]"))
        self.prefix = str(model.get("continuing_subword_prefix", "##"))
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        self.added = sorted(
            ((str(t["content"]), int(t["id"])) for t in tokenizer.get("added_tokens") or []),
            key=lambda item: -len(item[0]),
        )
        post = tokenizer["post_processor"]
        self.before: list[tuple[int, int]] = []
        self.after: list[tuple[int, int]] = []
        self.type_id = 0
        if post["type"] == "BertProcessing":
            self.before = [(int(post["cls"][1]), 0)]
            self.after = [(int(post["sep"][1]), 0)]
        else:
            specials = post.get("special_tokens") or {}
            side = self.before
            for piece in post["single"]:
                if "Sequence" in piece:
                    self.type_id = int(piece["Sequence"].get("type_id", 0))
                    side = self.after
                    continue
                special = piece["SpecialToken"]
                for token_id in specials[special["id"]]["ids"]:
                    side.append((int(token_id), int(special.get("type_id", 0))))

    # -- normalization and pre-tokenization
    def _normalize(self, text: str) -> str:
        chars: list[str] = []
        for c in text:
            if self.clean:
                # The library drops NUL, U+FFFD and control characters (but tab, newline and
                # carriage return) first, then makes every remaining whitespace a space.
                if c in ("\x00", "\ufffd") or (
                    c not in "\t\n\r" and unicodedata.category(c) in _CONTROL
                ):
                    continue
                if c in _WHITESPACE:
                    chars.append(" ")
                    continue
            if self.cjk and any(lo <= ord(c) <= hi for lo, hi in _CJK):
                chars.extend((" ", c, " "))
            else:
                chars.append(c)
        out = "".join(chars)
        if self.strip_accents:
            out = "".join(
                c for c in unicodedata.normalize("NFD", out) if unicodedata.category(c) != "Mn"
            )
        # Character by character, as the library lowercases (no final-sigma rule).
        return "".join(c.lower() for c in out) if self.lowercase else out

    @staticmethod
    def _words(text: str) -> list[str]:
        words: list[str] = []
        current: list[str] = []
        for c in text:
            if c in _WHITESPACE:
                if current:
                    words.append("".join(current))
                    current = []
            elif unicodedata.category(c)[0] == "P" or (
                c.isascii() and not c.isalnum() and c.isprintable()
            ):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(c)
            else:
                current.append(c)
        if current:
            words.append("".join(current))
        return words

    def _pieces(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.vocab[self.unk]]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.vocab[self.unk]]
            ids.append(found)
            start = end
        return ids

    def _segments(self, text: str) -> list[tuple[str, int | None]]:
        """The raw text cut around the added tokens (each an id), the rest left as text."""
        segments: list[tuple[str, int | None]] = [(text, None)]
        for content, token_id in self.added:
            cut: list[tuple[str, int | None]] = []
            for piece, known in segments:
                if known is not None or content not in piece:
                    cut.append((piece, known))
                    continue
                parts = piece.split(content)
                for i, part in enumerate(parts):
                    if i:
                        cut.append((content, token_id))
                    if part:
                        cut.append((part, None))
            segments = cut
        return segments

    def encode(self, text: str, max_length: int | None) -> tuple[list[int], list[int]]:
        """Token ids and type ids of ``text`` (special tokens included, truncated to
        ``max_length`` when given)."""
        ids: list[int] = []
        for piece, known in self._segments(text):
            if known is not None:
                ids.append(known)
                continue
            for word in self._words(self._normalize(piece)):
                ids.extend(self._pieces(word))
        if max_length is not None:
            ids = ids[: max(0, max_length - len(self.before) - len(self.after))]
        tokens = [*self.before, *((i, self.type_id) for i in ids), *self.after]
        return [t for t, _ in tokens], [k for _, k in tokens]


class TextStep:
    """A declared ``kind: text`` input: strings → input_ids / attention_mask / token_type_ids,
    padded as the server pads them (to the longest text, rounded up to ``pad_to_multiple_of``)."""

    ROLES = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(
        self, options: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]], folder: Path
    ) -> None:
        opts = dict(options)
        self.name = str(opts.pop("name"))
        opts.pop("kind", None)
        opts.pop("to", None)
        file = folder / str(opts.pop("tokenizer", "tokenizer.json"))
        try:
            self.tokenizer = WordPiece(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise BundleError(f"text input {self.name!r}: {file.name}: {exc}") from None
        self.max_length = int(opts.pop("max_length", 256))
        self.truncation = bool(opts.pop("truncation", True))
        self.max_bytes = int(opts.pop("max_bytes", 65536))
        self.multiple = max(1, int(opts.pop("pad_to_multiple_of", 16)))
        targets = {str(k): str(v) for k, v in dict(opts.pop("targets", {})).items()}
        if opts:
            raise BundleError(f"text input {self.name!r}: options this runner lacks: {opts}")
        self.roles = {
            role: targets.get(role, role)
            for role in self.ROLES
            if targets.get(role, role) in inputs
        }
        self.dtypes = {role: _NUMPY[inputs[t]["datatype"]] for role, t in self.roles.items()}
        self.targets = tuple(self.roles.values())

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        encoded = []
        for i, item in enumerate(items):
            raw = item if isinstance(item, bytes | bytearray) else str(item).encode()
            if len(raw) > self.max_bytes:
                raise BundleError(
                    f"input {self.name!r}[{i}]: text is {len(raw)} bytes, over the "
                    f"{self.max_bytes}-byte limit"
                )
            try:
                text = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BundleError(f"input {self.name!r}[{i}]: text is not UTF-8: {exc}") from None
            if not text.strip():
                raise BundleError(f"input {self.name!r}[{i}]: text is empty")
            encoded.append(
                self.tokenizer.encode(text, self.max_length if self.truncation else None)
            )
        longest = max(len(ids) for ids, _ in encoded)
        if not self.truncation and longest > self.max_length:
            raise BundleError(
                f"input {self.name!r}: a text has {longest} tokens, over max_length "
                f"{self.max_length}"
            )
        width = min(-(-longest // self.multiple) * self.multiple, max(self.max_length, longest))
        out: dict[str, Any] = {}
        for role, target in self.roles.items():
            array: Any = np.zeros((len(encoded), width), dtype=self.dtypes[role])
            for r, (ids, types) in enumerate(encoded):
                values = (
                    ids
                    if role == "input_ids"
                    else ([1] * len(ids) if role == "attention_mask" else types)
                )
                array[r, : len(values)] = values
            out[target] = array
        return out


# --------------------------------------------------------------------------- outputs
def _softmax(x: Any) -> Any:
    z = x.astype(np.float32) - x.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _topk(x: Any, k: int, labels: Sequence[str]) -> Any:
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


class OutputSteps:
    """A declared output chain: ``from`` a model tensor through ``steps`` to ``name``."""

    def __init__(self, item: Mapping[str, Any], labels: Sequence[str]) -> None:
        if "decode" in item:
            raise BundleError(
                f"output {item.get('name')!r}: decode {item['decode']!r} is not in this runner"
            )
        self.name = str(item["name"])
        self.source = str(item["from"])
        self.labels = tuple(labels)
        self.steps: list[tuple[str, Any]] = []
        self.sources = [self.source]
        for raw in item.get("steps", []):
            kind, arg = (raw, None) if isinstance(raw, str) else next(iter(raw.items()))
            if kind not in OUTPUT_STEPS:
                raise BundleError(f"output {self.name!r}: step {kind!r} is not in this runner")
            if kind == "mean_pool":
                self.sources.append(str(arg))
            self.steps.append((kind, arg))

    def __call__(self, arrays: Mapping[str, Any]) -> Any:
        x = arrays[self.source]
        for kind, arg in self.steps:
            if kind == "softmax":
                x = _softmax(x)
            elif kind == "sigmoid":
                x = (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)
            elif kind == "l2_normalize":
                x = x.astype(np.float32)
                x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
            elif kind == "mean_pool":
                mask = arrays[str(arg)].astype(np.float32)[..., None]
                x = ((x * mask).sum(axis=-2) / np.maximum(mask.sum(axis=-2), 1e-9)).astype(
                    np.float32
                )
            elif kind == "argmax":
                x = np.argmax(x, axis=-1).astype(np.int64)
                x = x.reshape(x.shape + (1,)) if x.ndim < 2 else x
            elif kind == "label":
                index = np.argmax(x, axis=-1)
                flat = np.empty(index.size, dtype=object)
                flat[:] = [
                    self.labels[int(i)].encode() if int(i) < len(self.labels) else str(i).encode()
                    for i in index.reshape(-1)
                ]
                x = (
                    flat.reshape(index.shape + (1,))
                    if index.ndim < 2
                    else flat.reshape(index.shape)
                )
            elif kind == "topk":
                x = _topk(x, int(arg), self.labels)
            elif kind == "threshold":
                x = x > float(arg)
        return x


# --------------------------------------------------------------------------- the bundle
class Bundle:
    """One loaded bundle: an onnxruntime session on the ORT model and its processing."""

    def __init__(self, folder: str | Path | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
        try:
            spec = json.loads((self.folder / "bundle.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.folder} is not an edge bundle: bundle.json: {exc}") from None
        self.spec = spec
        self.batching = bool(spec["batching"])
        self.inputs = {t["name"]: t for t in spec["inputs"]}
        self.outputs = [t["name"] for t in spec["outputs"]]
        self.image_params = dict(spec.get("image_params") or {})
        labels = {
            name: (self.folder / path).read_text(encoding="utf-8").splitlines()
            for name, path in (spec.get("labels") or {}).items()
        }
        declaration = spec.get("processing") or {}
        self.image_steps: list[ImageStep] = []
        self.text_steps: list[TextStep] = []
        for item in declaration.get("inputs", []):
            if item.get("kind") not in INPUT_KINDS:
                raise BundleError(f"input kind {item.get('kind')!r} is not in this runner")
            if item.get("kind") == "text":
                self.text_steps.append(TextStep(item, self.inputs, self.folder))
            else:
                self.image_steps.append(ImageStep(item, self.inputs[str(item["to"])]))
        self.output_steps = [
            OutputSteps(item, labels.get(str(item["from"]), ()))
            for item in declaration.get("outputs", [])
        ]
        targeted = {s.target for s in self.image_steps}
        targeted.update(t for s in self.text_steps for t in s.targets)
        self.client_inputs = [n for n in self.inputs if n not in targeted] + [
            *(s.name for s in self.image_steps),
            *(s.name for s in self.text_steps),
        ]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or spec.get("threads") or 1)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.load_model_format", "ORT")
        if spec.get("runtime_optimizations"):
            options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
        self.session = ort.InferenceSession(
            str(self.folder / spec["model"]), options, providers=["CPUExecutionProvider"]
        )

    # -- inputs
    def _tensor(self, name: str, value: Any) -> Any:
        spec = self.inputs[name]
        dims = list(spec["dims"])
        dtype = _NUMPY[spec["datatype"]]
        if isinstance(value, str | Path | bytes) and dtype is not np.object_:
            blob = _read(value)
            array = plain_image(blob, dtype, dims, self.image_params)
        else:
            array = np.asarray(value, dtype=dtype)
        if all(d > 0 for d in dims) and array.size == math.prod(dims):
            array = array.reshape(dims)
        if self.batching and array.ndim == len(dims):
            array = array[np.newaxis]
        return array

    def model_inputs(self, inputs: Any) -> dict[str, Any]:
        """Client inputs (a mapping, or one value for a single-input bundle) → model inputs."""
        if not isinstance(inputs, Mapping):
            if len(self.client_inputs) != 1:
                raise BundleError(f"this model takes inputs {self.client_inputs}: pass a mapping")
            inputs = {self.client_inputs[0]: inputs}
        unknown = sorted(set(inputs) - set(self.client_inputs))
        missing = sorted(set(self.client_inputs) - set(inputs))
        if unknown or missing:
            raise BundleError(
                f"inputs are {self.client_inputs}; unknown {unknown}, missing {missing}"
            )
        arrays: dict[str, Any] = {}
        steps = {s.name: s for s in self.image_steps}
        texts = {s.name: s for s in self.text_steps}
        for name, value in inputs.items():
            if name in texts:
                arrays.update(texts[name](list(np.asarray(value, dtype=object).reshape(-1))))
            elif name in steps:
                items = value if isinstance(value, list | tuple) else [value]
                if isinstance(value, np.ndarray):
                    items = list(value.reshape(-1))
                batch = steps[name](items)
                arrays[steps[name].target] = batch if self.batching else batch[0]
            else:
                arrays[name] = self._tensor(name, value)
        return arrays

    def predict(self, inputs: Any) -> dict[str, Any]:
        """Client inputs → every client output (the server's answer, as numpy arrays)."""
        feed = self.model_inputs(inputs)
        values = self.session.run(self.outputs, feed)
        raw = dict(zip(self.outputs, values, strict=True))
        if not self.output_steps:
            return raw
        out: dict[str, Any] = {}
        consumed: set[str] = set()
        for step in self.output_steps:
            given = {n: raw[n] if n in raw else feed[n] for n in step.sources}
            out[step.name] = step(given)
            consumed.update(n for n in step.sources if n in raw)
        for name, array in raw.items():
            if name not in consumed and name not in out:
                out[name] = array
        return out


_LOADED: dict[str, Bundle] = {}


def load(folder: str | Path | None = None, threads: int | None = None) -> Bundle:
    """The bundle in ``folder`` (default: this file's folder), loaded once per process."""
    key = f"{Path(folder).resolve() if folder else ''}:{threads}"
    if key not in _LOADED:
        _LOADED[key] = Bundle(folder, threads)
    return _LOADED[key]


def predict(inputs: Any, folder: str | Path | None = None) -> dict[str, Any]:
    """Answer ``inputs`` with the bundle beside this file (or in ``folder``)."""
    return load(folder).predict(inputs)


# --------------------------------------------------------------------------- command line
def _file_input(bundle: Bundle, path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: {exc}") from None
        if not isinstance(document, dict):
            raise BundleError(f"{path}: expected an object of input name → data")
        return document
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: {exc}") from None
    if suffix in _IMAGE_SUFFIXES:
        return path
    raise BundleError(f"{path}: unsupported input type {suffix!r} (image, .npy or .json)")


def _plain(array: Any) -> Any:
    """An answer as JSON values (BYTES decoded as UTF-8)."""
    a = np.asarray(array)
    if a.dtype == object:
        flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in a.reshape(-1)]
        return np.asarray(flat, dtype=object).reshape(a.shape).tolist()
    return a.tolist()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Answer inputs with this edge bundle.")
    parser.add_argument("inputs", nargs="+", type=Path, help="image, .npy or .json files")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="then answer all inputs N more times and print "
        "the latency (p50/p99 in ms) as a last JSON line",
    )
    args = parser.parse_args(argv)
    try:
        bundle = load(args.bundle, args.threads)
        given = [(path, _file_input(bundle, path)) for path in args.inputs]
        for path, value in given:
            answer = bundle.predict(value)
            line = {"input": str(path), "outputs": {k: _plain(v) for k, v in answer.items()}}
            print(json.dumps(line), flush=True)
        times: list[float] = []
        for _ in range(max(0, args.repeat)):
            for _, value in given:
                start = time.perf_counter()
                bundle.predict(value)
                times.append((time.perf_counter() - start) * 1000.0)
        if times:
            print(
                json.dumps(
                    {
                        "latency_ms": {
                            "count": len(times),
                            "p50": float(np.percentile(times, 50)),
                            "p99": float(np.percentile(times, 99)),
                        }
                    }
                ),
                flush=True,
            )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
