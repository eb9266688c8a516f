"""Sample inputs an export checks the bundle on, as files both the runner and the engine read.

In order of preference: the images in the model folder's ``samples/`` (the zoo's sample
inputs), the model's warm-up samples (Triton's ``model_warmup``; usable when no input
processing stands between them and the model), and generated valid inputs (random pictures for
image inputs, random tensors of each input's datatype and dims).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.image import IMAGE_SUFFIXES, image_layout

__all__ = ["Sample", "image_inputs", "request_arrays", "write_samples"]

#: At most this many samples of each source.
LIMIT = 4
#: Texts of the samples generated for a declared text input: accents, CJK, punctuation, an
#: added token, a batch of two lengths (padding) and one past any usual ``max_length``
#: (truncation), so a bundle's tokenizer is checked where tokenizers differ.
TEXTS: tuple[tuple[str, ...], ...] = (
    ("A man is playing a guitar on the street.",),
    ("Café déjà vu: naïve résumés — ½ price! 東京は日本の首都です。", "Short one [SEP] here"),
    ("e-mail test@example.com, call +1 (555) 010-9999; 3.14159 ≈ π… ok?!",),
    (" ".join(["Inference servers answer predictions on new data quickly."] * 60),),
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One input file and where it came from (``samples``, ``warmup`` or ``generated``)."""

    path: Path
    source: str


def image_inputs(config: ModelConfig, declaration: dict[str, Any] | None) -> list[str]:
    """Client inputs that take an image file: declared image inputs, else a lone model input
    shaped like an image (fed as ``forwardpass predict`` feeds it)."""
    declared = [
        str(i.get("name"))
        for i in (declaration or {}).get("inputs", [])
        if i.get("kind") == "image"
    ]
    if declared:
        return declared
    if len(config.inputs) == 1 and config.inputs[0].datatype.is_float:
        try:
            image_layout(config.inputs[0].dims)
        except Exception:
            return []
        return [config.inputs[0].name]
    return []


def _random_tensor(spec: TensorSpec, batching: bool, rng: np.random.Generator) -> np.ndarray:
    dims = tuple(1 if d < 0 else d for d in spec.dims)
    shape = ((1,) if batching else ()) + dims
    if spec.datatype is DataType.BOOL:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if spec.datatype.is_float:
        return rng.random(shape).astype(spec.datatype.numpy)
    return rng.integers(0, 128, size=shape).astype(spec.datatype.numpy)


def _png(width: int, height: int, rng: np.random.Generator) -> bytes:
    from PIL import Image

    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_samples(
    config: ModelConfig,
    model_dir: Path,
    client_inputs: list[TensorSpec],
    declaration: dict[str, Any] | None,
    into: Path,
) -> list[Sample]:
    """Write sample input files into ``into``; at least one, at most a few per source."""
    from forwardpass.repository.warmup import warmup_inputs

    into.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = image_inputs(config, declaration)
    samples: list[Sample] = []
    if len(client_inputs) == 1 and images:
        found = sorted(
            p for p in (model_dir / "samples").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )[:LIMIT]
        for path in found:
            target = into / f"sample-{len(samples)}{path.suffix.lower()}"
            target.write_bytes(path.read_bytes())
            samples.append(Sample(target, "samples"))
    if not (declaration or {}).get("inputs") and not any(
        s.datatype is DataType.BYTES for s in client_inputs
    ):
        for _, arrays in warmup_inputs(config, model_dir)[:LIMIT]:
            target = into / f"warmup-{len(samples)}.json"
            target.write_text(json.dumps({k: v.tolist() for k, v in arrays.items()}))
            samples.append(Sample(target, "warmup"))
    texts = [
        str(i.get("name")) for i in (declaration or {}).get("inputs", []) if i.get("kind") == "text"
    ]
    if not samples and texts and len(client_inputs) == len(texts):
        for rows in TEXTS:
            target = into / f"generated-{len(samples)}.json"
            column = [[text] for text in rows] if config.batching else list(rows)
            target.write_text(json.dumps({name: column for name in texts}, ensure_ascii=False))
            samples.append(Sample(target, "generated"))
    if not samples:
        for _ in range(2):
            if len(client_inputs) == 1 and images:
                target = into / f"generated-{len(samples)}.png"
                target.write_bytes(_png(40 + 8 * len(samples), 30, rng))
            else:
                document = {}
                for spec in client_inputs:
                    if spec.name in images:
                        raise InvalidArgument(
                            f"cannot make a sample for image input {spec.name!r} beside other "
                            "inputs; add sample pictures to the model's samples/ folder"
                        )
                    document[spec.name] = _random_tensor(spec, config.batching, rng).tolist()
                target = into / f"generated-{len(samples)}.json"
                target.write_text(json.dumps(document))
            samples.append(Sample(target, "generated"))
    return samples


def request_arrays(
    path: Path, config: ModelConfig, specs: dict[str, TensorSpec], images: list[str]
) -> dict[str, np.ndarray]:
    """The tensors the engine is sent for sample ``path`` (what a client would send)."""
    from forwardpass.processing.image import load_image

    suffix = path.suffix.lower()
    if suffix == ".json":
        document = json.loads(path.read_text())
        return {
            name: np.asarray(data, dtype=specs[name].datatype.numpy)
            for name, data in document.items()
        }
    (name,) = images
    spec = specs[name]
    if spec.datatype is DataType.BYTES:
        array = np.empty((1, 1) if config.batching else (1,), dtype=object)
        array.reshape(-1)[0] = path.read_bytes()
        return {name: array}
    image = load_image(path, spec, config.parameters)
    if math.prod(image.shape) and config.batching:
        image = image[np.newaxis]
    return {name: image}
