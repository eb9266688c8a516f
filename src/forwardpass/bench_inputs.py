"""What ``forwardpass bench`` sends: real inputs from files, or valid synthesized ones.

``--input-data`` follows perf_analyzer's (Triton's load generator) conventions:

- a JSON file ``{"data": [step, ...]}``; each step maps input names to a flat list of values
  (``[1, 2, 3]``), to ``{"content": [...], "shape": [...]}`` for inputs with variable
  dimensions, or to ``{"b64": "..."}``: base64 of the raw little-endian bytes of a numeric
  tensor, or of one BYTES element (an encoded picture, a WAV clip). Shapes exclude the batch
  dimension; the steps are sent in turn, one per request.
- a folder with one file per input, named after the input: its raw contents are one batch-1
  sample (numeric inputs: little-endian values in row-major order; a BYTES input: the file is
  the one element);
- otherwise files (or a folder of files) for a model with a single BYTES input: each file is one
  element (a PNG/JPEG for an image input, UTF-8 text for a text input), one request each.

Without ``--input-data``, an input the model's declared processing reads as an image gets a real
PNG (made with Pillow, sized for the model input), a text input a real sentence, and an audio
input a short WAV clip: random bytes would only measure the server's error path.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType, bf16_from_float32
from forwardpass.errors import InvalidArgument

__all__ = ["Inputs", "processed_kinds", "read_input_data", "synthesize_processed"]

#: name → (datatype, array with the batch dimension when the model batches).
Inputs = dict[str, tuple[DataType, np.ndarray]]

_SENTENCE = b"The quick brown fox jumps over the lazy dog near the quiet river bank."


def processed_kinds(config: Mapping[str, Any] | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Client input name → (kind, declaration) from the config's ``processing`` parameter."""
    if not config:
        return {}
    raw = (config.get("parameters") or {}).get("processing")
    text = raw.get("string_value") if isinstance(raw, Mapping) else raw
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        declaration = json.loads(text)
    except ValueError:
        import yaml

        try:
            declaration = yaml.safe_load(text)
        except yaml.YAMLError:
            return {}
    kinds: dict[str, tuple[str, dict[str, Any]]] = {}
    for i, item in enumerate((declaration or {}).get("inputs") or []):
        if isinstance(item, Mapping) and isinstance(item.get("kind"), str):
            name = str(item.get("name") or item.get("to") or f"input_{i}")
            kinds[name] = (item["kind"], dict(item))
    return kinds


def _image_size(config: Mapping[str, Any] | None, item: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) of a picture that fits the model input the image input feeds."""
    from forwardpass.processing.image import image_layout

    target = next(
        (t for t in (config or {}).get("input", []) if t.get("name") == item.get("to")), None
    )
    try:
        _, _, height, width = image_layout(tuple(int(d) for d in (target or {}).get("dims", ())))
    except (InvalidArgument, TypeError, ValueError):
        height = width = 224
    return max(width, 32), max(height, 32)


def _png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    # A smooth gradient with noise: compresses like a photograph, not like a flat field.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(rate: int = 16000, seconds: float = 1.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def synthesize_processed(
    kind: str, item: Mapping[str, Any], config: Mapping[str, Any] | None, seed: int = 0
) -> bytes | None:
    """One valid raw element for a processed input of ``kind``, or None (numbers are fine)."""
    if kind == "image":
        return _png(*_image_size(config, item), seed)
    if kind == "text":
        return _SENTENCE
    if kind == "audio":
        return _wav()
    return None


def _batched(array: np.ndarray, batching: bool, batch_size: int) -> np.ndarray:
    if not batching:
        return array
    return np.repeat(array[None], batch_size, axis=0)


def _tensor(
    name: str, datatype: DataType, shape: tuple[int, ...], value: Any, where: str
) -> np.ndarray:
    """One step's value for input ``name`` as an array of ``shape`` (no batch dimension)."""
    if isinstance(value, Mapping) and "b64" in value:
        try:
            raw = base64.b64decode(str(value["b64"]), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{where}: input {name}: 'b64' is not valid base64") from None
        if datatype is DataType.BYTES:
            shape = tuple(d if d > 0 else 1 for d in shape) or (1,)
            array = np.empty(shape, dtype=object)
            array.reshape(-1)[:] = [raw] * math.prod(shape)
            return array
        return _from_raw(name, datatype, shape, raw, where)
    if isinstance(value, Mapping):
        if "content" not in value:
            raise InvalidArgument(f"{where}: input {name}: expected a list, content or b64")
        shape = tuple(int(d) for d in value.get("shape", shape))
        value = value["content"]
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: input {name}: expected a list of values")
    flat = _flatten(value)
    if any(d < 1 for d in shape):
        raise InvalidArgument(
            f"{where}: input {name} has variable dimensions: give "
            '{"content": [...], "shape": [...]}'
        )
    if len(flat) != math.prod(shape):
        raise InvalidArgument(
            f"{where}: input {name}: {len(flat)} values do not fill shape {list(shape)}"
        )
    if datatype is DataType.BYTES:
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in flat]
        return array.reshape(shape)
    try:
        numbers = np.asarray(flat, dtype=np.float64 if datatype.is_float else np.int64)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}: input {name}: values are not numbers") from None
    if datatype is DataType.BF16:
        return bf16_from_float32(numbers.astype(np.float32)).reshape(shape)
    return numbers.astype(datatype.numpy).reshape(shape)


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


def _from_raw(
    name: str, datatype: DataType, shape: tuple[int, ...], raw: bytes, where: str
) -> np.ndarray:
    if datatype is DataType.BF16:
        dtype = np.dtype("<u2")
    else:
        dtype = np.dtype(datatype.numpy).newbyteorder("<")
    if any(d < 1 for d in shape) or len(raw) != math.prod(shape) * dtype.itemsize:
        raise InvalidArgument(
            f"{where}: input {name}: {len(raw)} bytes do not make {datatype.value} "
            f"{list(shape)} ({math.prod(shape) * dtype.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def read_input_data(
    paths: Sequence[Path],
    inputs: Sequence[tuple[str, str, tuple[int, ...]]],
    *,
    batching: bool,
    batch_size: int,
) -> list[Inputs]:
    """The requests ``paths`` describe (see the module docstring), one Inputs per request.

    ``inputs`` are the model's (name, datatype, shape without the batch dimension).
    """
    specs = {name: (DataType.parse(dt), shape) for name, dt, shape in inputs}
    if len(paths) == 1 and paths[0].suffix.lower() == ".json":
        return _json_steps(paths[0], specs, batching, batch_size)
    if len(paths) == 1 and paths[0].is_dir():
        files = {p.name: p for p in paths[0].iterdir() if p.is_file()}
        if set(specs) <= set(files):
            step = {}
            for name, (datatype, shape) in specs.items():
                raw = files[name].read_bytes()
                if datatype is DataType.BYTES:
                    value = _tensor(name, datatype, shape, {"b64": _b64(raw)}, str(paths[0]))
                else:
                    value = _from_raw(name, datatype, shape, raw, str(files[name]))
                step[name] = (datatype, _batched(value, batching, batch_size))
            return [step]
        paths = sorted(p for p in files.values() if not p.name.startswith("."))
    if len(specs) != 1 or next(iter(specs.values()))[0] is not DataType.BYTES:
        raise InvalidArgument(
            "files as --input-data fit a model with one BYTES input (an image or a text); "
            f"this model takes {', '.join(sorted(specs))}: give a perf_analyzer JSON file or a "
            "folder with one file per input, named after it"
        )
    ((name, (datatype, shape)),) = specs.items()
    steps = []
    for path in paths:
        if not path.is_file():
            raise InvalidArgument(f"--input-data {path}: no such file")
        value = _tensor(name, datatype, shape, {"b64": _b64(path.read_bytes())}, str(path))
        steps.append({name: (datatype, _batched(value, batching, batch_size))})
    if not steps:
        raise InvalidArgument("--input-data names no files")
    return steps


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _json_steps(
    path: Path,
    specs: Mapping[str, tuple[DataType, tuple[int, ...]]],
    batching: bool,
    batch_size: int,
) -> list[Inputs]:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"--input-data {path}: not readable JSON ({exc})") from None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or not data:
        raise InvalidArgument(f'--input-data {path}: expected {{"data": [{{...}}, ...]}}')
    steps = []
    for i, step in enumerate(data):
        where = f"--input-data {path.name} data[{i}]"
        if not isinstance(step, dict):
            raise InvalidArgument(f"{where}: expected an object of inputs")
        unknown, missing = set(step) - set(specs), set(specs) - set(step)
        if unknown or missing:
            raise InvalidArgument(
                f"{where}: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown input(s) {', '.join(sorted(unknown))}" if unknown else "",
                        f"missing input(s) {', '.join(sorted(missing))}" if missing else "",
                    )
                    if part
                )
            )
        steps.append(
            {
                name: (
                    datatype,
                    _batched(
                        _tensor(name, datatype, shape, step[name], where), batching, batch_size
                    ),
                )
                for name, (datatype, shape) in specs.items()
            }
        )
    return steps
