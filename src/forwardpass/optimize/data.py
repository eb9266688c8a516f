"""Calibration and validation data: real inputs read from disk, or random ones for latency.

Accepted sources (the arrays of every sample are stacked along a leading sample axis, which is
the batch axis for a batching model):

- an ``.npz`` file whose keys are the model's input names (an extra ``labels`` key, when it is
  not an input name, holds the labels);
- an ``.npy`` file, for a model with one input;
- a folder of ``.npz`` / ``.npy`` files (read in name order, each one sample or a batch of
  them), or of image files: an image is fed through the model's declared ``processing`` when
  it has an image input, else decoded to the input's shape as ``forwardpass predict`` does;
- a ``.txt`` file of sentences, one per line, for a model whose declared ``processing`` has a
  text input: the sentences go through that processing (its tokenizer), all at once, so they
  are padded to one length as a batch of them would be when served.

Without any of these, :func:`synthesize` makes random inputs of the right shapes; they serve
for latency only, and the report says "no accuracy data: agreement on random inputs".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from forwardpass.errors import InvalidArgument
from forwardpass.model_config import ModelConfig, TensorSpec

__all__ = [
    "REQUEST_LOG_FOLDER",
    "Samples",
    "find_request_log",
    "load_labels",
    "load_samples",
    "synthesize",
]

#: Where a model's request log (a folder of ``.npz`` samples) is looked for, in its folder.
REQUEST_LOG_FOLDER = "request_log"
_RANDOM_NOTE = "no accuracy data: agreement on random inputs"
_DYNAMIC_DIM = 16


@dataclass(frozen=True, slots=True)
class Samples:
    """Model inputs for N samples, where they came from, and (optionally) their labels."""

    arrays: Mapping[str, np.ndarray]
    source: str
    #: False for synthesized inputs: good for latency, meaningless for accuracy.
    real: bool = True
    labels: np.ndarray | None = None
    #: Side data the model's processing gave beside its inputs, per sample (an image
    #: step's picture geometry), for the drift monitor's reference profile.
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def take(self, indices: Sequence[int] | np.ndarray, source: str | None = None) -> Samples:
        """The samples at ``indices`` (labels follow)."""
        index = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            arrays={k: v[index] for k, v in self.arrays.items()},
            labels=None if self.labels is None else self.labels[index],
            extra={k: v[index] for k, v in self.extra.items()},
            source=source or self.source,
        )

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive slices of at most ``size`` samples."""
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.arrays.items()}

    def with_labels(self, labels: np.ndarray) -> Samples:
        if len(labels) != len(self):
            raise InvalidArgument(
                f"{len(labels)} labels for {len(self)} validation samples ({self.source}); "
                "give one label per sample, in the order the samples are read"
            )
        return replace(self, labels=labels)


def _required(config: ModelConfig) -> list[TensorSpec]:
    return [s for s in config.inputs if not s.optional]


def _conform(spec: TensorSpec, array: np.ndarray, batching: bool, where: str) -> np.ndarray:
    """``array`` as samples of ``spec``: the sample axis added when missing, dtype checked."""
    array = np.asarray(array)
    if array.ndim == len(spec.dims):
        array = array[None]
    if array.ndim != len(spec.dims) + 1:
        expected = "[N, " + ", ".join(map(str, spec.dims)) + "]"
        raise InvalidArgument(
            f"{where}: input {spec.name!r} has shape {list(array.shape)}, expected {expected}"
        )
    for got, want in zip(array.shape[1:], spec.dims, strict=True):
        if want > 0 and got != want:
            raise InvalidArgument(
                f"{where}: input {spec.name!r} has shape {list(array.shape)}, but the model "
                f"takes {list(spec.dims)} per sample"
            )
    dtype = spec.datatype.numpy
    if array.dtype != dtype:
        if np.issubdtype(dtype, np.floating) and np.issubdtype(array.dtype, np.number):
            array = array.astype(dtype)
        elif np.issubdtype(dtype, np.integer) and np.issubdtype(array.dtype, np.integer):
            array = array.astype(dtype)
        else:
            raise InvalidArgument(
                f"{where}: input {spec.name!r} is {array.dtype}, the model takes {dtype}"
            )
    return np.ascontiguousarray(array)


def _from_mapping(
    config: ModelConfig, data: Mapping[str, np.ndarray], where: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    names = {s.name for s in config.inputs}
    missing = [s.name for s in _required(config) if s.name not in data]
    if missing:
        raise InvalidArgument(
            f"{where} has no array for input(s) {missing} (it holds {sorted(data)}); "
            "name each array after the model input it feeds"
        )
    arrays = {
        s.name: _conform(s, data[s.name], config.batching, where)
        for s in config.inputs
        if s.name in data
    }
    counts = {len(a) for a in arrays.values()}
    if len(counts) > 1:
        raise InvalidArgument(f"{where}: the inputs hold different numbers of samples")
    labels = data["labels"] if "labels" in data and "labels" not in names else None
    return arrays, None if labels is None else np.asarray(labels)


def _single_input(config: ModelConfig, where: str) -> TensorSpec:
    required = _required(config)
    if len(required) != 1:
        raise InvalidArgument(
            f"{where}: an .npy array can feed only a one-input model; this one takes "
            f"{[s.name for s in required]}: use an .npz keyed by input name"
        )
    return required[0]


def _read_images(
    config: ModelConfig, model_dir: Path, labels: Mapping[str, Sequence[str]], files: list[Path]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The model inputs for ``files``, and the side data processing added (geometry)."""
    from forwardpass.processing.image import ImageInput, load_image
    from forwardpass.processing.spec import build_processing

    processing = build_processing(config, model_dir, labels)
    image_processors = [p for p in processing.inputs if isinstance(p, ImageInput)]
    per_file: list[dict[str, np.ndarray]] = []
    side: list[dict[str, np.ndarray]] = []
    if image_processors:
        if len(processing.client_inputs) != 1:
            raise InvalidArgument(
                "image files can feed a model whose only raw input is an image; this one takes "
                f"{[s.name for s in processing.client_inputs]}"
            )
        client = processing.client_inputs[0].name
        for path in files:
            blob = np.array([path.read_bytes()], dtype=object)
            prepared = processing.preprocess({client: blob})
            # Keep the model's inputs only (processing may add side data such as geometry).
            per_file.append({s.name: prepared[s.name] for s in config.inputs})
            side.append({k: v for k, v in prepared.items() if k not in per_file[-1]})
    else:
        spec = _single_input(config, f"images in {files[0].parent}")
        for path in files:
            per_file.append({spec.name: load_image(path, spec, config.parameters)[None]})
    extra = {k: np.concatenate([d[k] for d in side]) for k in side[0]} if side else {}
    return {k: np.concatenate([d[k] for d in per_file]) for k in per_file[0]}, extra


def _read_texts(
    config: ModelConfig,
    model_dir: Path,
    labels: Mapping[str, Sequence[str]],
    path: Path,
    limit: int | None,
) -> dict[str, np.ndarray]:
    from forwardpass.processing.spec import build_processing
    from forwardpass.processing.text import TextInput

    processing = build_processing(config, model_dir, labels)
    if not any(isinstance(p, TextInput) for p in processing.inputs):
        raise InvalidArgument(
            f"{path}: a text file of sentences fits a model whose processing declares a text "
            f"input; {config.name!r} declares none (give .npz/.npy arrays of its inputs)"
        )
    if len(processing.client_inputs) != 1:
        raise InvalidArgument(
            f"{path}: sentences can feed a model whose only raw input is a text; this one takes "
            f"{[s.name for s in processing.client_inputs]}"
        )
    if not config.batching:
        raise InvalidArgument(
            f"{path}: {config.name!r} does not batch, so sentences of different lengths cannot "
            "be stacked; give .npz files of its inputs instead"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path} as UTF-8 text: {exc}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()][:limit]
    if not lines:
        raise InvalidArgument(f"{path} holds no sentences (one per line)")
    blobs = np.empty((len(lines), 1), dtype=object)
    blobs[:, 0] = [line.encode() for line in lines]
    prepared = processing.preprocess({processing.client_inputs[0].name: blobs})
    return {s.name: prepared[s.name] for s in config.inputs if s.name in prepared}


def load_samples(
    path: Path,
    config: ModelConfig,
    *,
    model_dir: Path | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    limit: int | None = None,
) -> Samples:
    """The samples in ``path`` (file or folder, see the module docstring), at most ``limit``."""
    from forwardpass.processing.image import IMAGE_SUFFIXES

    where = str(path)
    found_labels: np.ndarray | None = None
    extra: dict[str, np.ndarray] = {}
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            arrays, found_labels = _from_mapping(config, dict(npz), where)
    elif path.is_file() and path.suffix == ".npy":
        spec = _single_input(config, where)
        arrays = {spec.name: _conform(spec, np.load(path, allow_pickle=False), True, where)}
    elif path.is_file() and path.suffix.lower() == ".txt":
        arrays = _read_texts(config, model_dir or path.parent, labels or {}, path, limit)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        kinds = {p.suffix.lower() for p in files}
        if not files:
            raise InvalidArgument(f"{where} holds no files")
        if kinds <= IMAGE_SUFFIXES:
            arrays, extra = _read_images(config, model_dir or path, labels or {}, files[:limit])
        elif kinds == {".npz"}:
            parts = [load_samples(f, config) for f in files]
            arrays = {k: np.concatenate([p.arrays[k] for p in parts]) for k in parts[0].arrays}
        elif kinds == {".npy"}:
            spec = _single_input(config, where)
            arrays = {
                spec.name: np.concatenate(
                    [_conform(spec, np.load(f, allow_pickle=False), True, str(f)) for f in files]
                )
            }
        else:
            raise InvalidArgument(
                f"{where} mixes file kinds {sorted(kinds)}; use one of .npz, .npy or images"
            )
    elif not path.exists():
        raise InvalidArgument(f"{where} does not exist")
    else:
        raise InvalidArgument(
            f"{where}: expected an .npz, an .npy, a .txt of sentences, or a folder of them/images"
        )
    samples = Samples(arrays, source=where, real=True, labels=found_labels, extra=extra)
    if limit is not None and len(samples) > limit:
        samples = samples.take(np.arange(limit))
    return samples


def load_labels(path: Path) -> np.ndarray:
    """Labels from an ``.npy`` (class ids or values) or a text file (one per line)."""
    try:
        if path.suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read labels {path}: {exc}") from exc
    try:
        return np.array([int(x) for x in lines], dtype=np.int64)
    except ValueError:
        try:
            return np.array([float(x) for x in lines], dtype=np.float64)
        except ValueError as exc:
            raise InvalidArgument(f"labels {path}: not numbers ({exc})") from exc


def find_request_log(model_dir: Path) -> Path | None:
    """The model's request log folder, when the monitor has written one with samples."""
    folder = model_dir / REQUEST_LOG_FOLDER
    if folder.is_dir() and any(folder.glob("*.npz")):
        return folder
    return None


def synthesize(config: ModelConfig, count: int, seed: int = 0) -> Samples:
    """Random inputs of the model's shapes: latency only, never accuracy or calibration."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in config.inputs:
        shape = (count, *(d if d > 0 else _DYNAMIC_DIM for d in spec.dims))
        dtype = spec.datatype.numpy
        if np.issubdtype(dtype, np.floating):
            arrays[spec.name] = rng.random(shape).astype(dtype)
        elif "mask" in spec.name.lower():
            arrays[spec.name] = np.ones(shape, dtype=dtype)
        elif "token_type" in spec.name.lower():  # segment ids: BERT knows 0 and 1 only
            arrays[spec.name] = np.zeros(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            arrays[spec.name] = rng.integers(0, 100, shape).astype(dtype)
        elif dtype == np.bool_:
            arrays[spec.name] = rng.random(shape) > 0.5
        else:
            raise InvalidArgument(
                f"cannot synthesize input {spec.name!r} of type {spec.datatype.value}; "
                "give --validation data"
            )
    return Samples(arrays, source=_RANDOM_NOTE, real=False)
