"""What drift is measured on: a model's inputs and outputs turned into named feature columns.

A :class:`Profiler` is built from the model's config and its declared processing. It reads
the tensors the model itself sees (the *processed* inputs, so a reference built from files
through the model's processing and served traffic are described the same way) and the
model's raw outputs:

- tabular processing: one numeric feature per named column;
- image processing: per picture ``<input>.brightness`` and ``<input>.contrast`` — the mean and
  standard deviation of the processed input tensor (after resize, crop and normalisation:
  what the network sees, not the decoded photo) — and ``<input>.width`` / ``<input>.height``
  of the picture as sent, from the geometry the image step passes on;
- text processing: ``<input>.tokens`` (tokens after truncation), ``<input>.distinct`` (share
  of distinct tokens) and ``<input>.unknown`` (share of unknown tokens, when the tokenizer
  has an unknown token);
- any other input: its values when it is small (up to 64 per row; integers and strings are
  categorical), else its mean and standard deviation;
- outputs: a score vector gives ``<output>.class`` (arg-max, categorical: class
  frequencies) and ``<output>.score`` (its largest value: the score distribution); a single
  value per row is the feature itself.

The embedding, for the multivariate MMD test, is the output named ``embedding`` in the drift
settings, or (``"auto"``, the default) for an ONNX model with an image or text input the
penultimate activations: the input of the last ``Gemm``/``MatMul`` before the first output
(efficientnet-lite0: the 1280 pooled features). Those are computed by a second onnxruntime
session of the same file with that tensor added as a graph output, run by the monitor off
the request path, so the served model is untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig

__all__ = ["EmbeddingExtractor", "Profile", "Profiler", "penultimate_tensor"]

_SMALL = 64
NUMERIC = "numeric"
CATEGORICAL = "categorical"


@dataclass(slots=True)
class Profile:
    """Named feature columns (one value per row) and the embedding rows, for N rows."""

    features: dict[str, np.ndarray] = field(default_factory=dict)
    embedding: np.ndarray | None = None

    def __len__(self) -> int:
        for v in self.features.values():
            return len(v)
        return 0 if self.embedding is None else len(self.embedding)


def _rows(array: np.ndarray, batching: bool) -> np.ndarray:
    """``array`` with a leading row axis (a non-batching model's tensor is one row)."""
    array = np.asarray(array)
    return array.reshape(1, *array.shape) if not batching else array


def _is_categorical(array: np.ndarray) -> bool:
    return not np.issubdtype(array.dtype, np.floating)


class _Column:
    """A feature extractor: tensors → one column per row."""

    def __init__(self, name: str, kind: str, fn: Any) -> None:
        self.name, self.kind, self.fn = name, kind, fn


class Profiler:
    """Turns one batch of model inputs/outputs into a :class:`Profile` (see module docstring)."""

    def __init__(
        self,
        config: ModelConfig,
        model_dir: Path,
        labels: Mapping[str, Sequence[str]] | None = None,
        *,
        embedding: str = "auto",
        model_file: Path | None = None,
        categorical: Sequence[str] = (),
        features: Sequence[str] | None = None,
    ) -> None:
        from forwardpass.processing.spec import build_processing

        self.config = config
        self.batching = config.batching
        processing = build_processing(config, model_dir, labels or {})
        columns = self._input_columns(processing)
        columns += self._output_columns(embedding)
        names = [c.name for c in columns]
        unknown = [c for c in (*categorical, *(features or ())) if c not in names]
        if unknown:
            raise InvalidModelConfig(
                f"monitoring.drift names feature(s) {sorted(set(unknown))} that model "
                f"{config.name!r} does not have; its features are {names}"
            )
        if features is not None:
            columns = [c for c in columns if c.name in set(features)]
        for c in columns:
            if c.name in categorical:
                c.kind = CATEGORICAL
        self.columns = columns
        self.kinds = {c.name: c.kind for c in columns}
        self.embedding_output: str | None = None
        self.extractor: EmbeddingExtractor | None = None
        #: Why ``auto`` found no embedding, when it found none.
        self.embedding_note = ""
        if embedding not in ("auto", "none"):
            if config.output(embedding) is None:
                raise InvalidModelConfig(
                    f"monitoring.drift.embedding names output {embedding!r}, which model "
                    f"{config.name!r} lacks (outputs: {[o.name for o in config.outputs]})"
                )
            self.embedding_output = embedding
        elif embedding == "auto" and model_file is not None and self._wants_embedding(processing):
            try:
                self.extractor = EmbeddingExtractor(model_file, [s.name for s in config.inputs])
            except InvalidModelConfig as exc:
                # "auto" asks for the penultimate layer where there is one; without it the
                # model is monitored on its features and outputs alone.
                self.embedding_note = exc.message

    # ------------------------------------------------------------------ building
    def _input_columns(self, processing: Any) -> list[_Column]:
        from forwardpass.processing.image import ImageInput, geometry_key
        from forwardpass.processing.tabular import TabularInput
        from forwardpass.processing.text import TextInput

        columns: list[_Column] = []
        covered: set[str] = set()
        for p in processing.inputs:
            covered.update(p.targets)
            if isinstance(p, TabularInput):
                target = p.target.name
                for j, column in enumerate(p.columns):
                    columns.append(_Column(column, NUMERIC, _tabular(target, j)))
            elif isinstance(p, ImageInput):
                name, target = p.inputs[0].name, p.target.name
                columns.append(_Column(f"{name}.brightness", NUMERIC, _image_stat(target, "mean")))
                columns.append(_Column(f"{name}.contrast", NUMERIC, _image_stat(target, "std")))
                geometry = geometry_key(name)
                columns.append(_Column(f"{name}.width", NUMERIC, _extra(geometry, 4)))
                columns.append(_Column(f"{name}.height", NUMERIC, _extra(geometry, 5)))
            elif isinstance(p, TextInput):
                name = p.inputs[0].name
                ids = p.roles["input_ids"].name
                mask = p.roles["attention_mask"].name if "attention_mask" in p.roles else None
                columns.append(_Column(f"{name}.tokens", NUMERIC, _tokens(ids, mask)))
                columns.append(_Column(f"{name}.distinct", NUMERIC, _distinct(ids, mask)))
                unk = _unknown_id(p.tokenizer)
                if unk is not None:
                    columns.append(_Column(f"{name}.unknown", NUMERIC, _unknown(ids, mask, unk)))
        for spec in self.config.inputs:
            if spec.name in covered:
                continue
            size = int(np.prod(spec.dims)) if spec.dims and all(d > 0 for d in spec.dims) else -1
            kind = CATEGORICAL if not np.issubdtype(spec.datatype.numpy, np.floating) else NUMERIC
            if 0 < size <= _SMALL:
                for j in range(size):
                    label = spec.name if size == 1 else f"{spec.name}[{j}]"
                    columns.append(_Column(label, kind, _element(spec.name, j)))
            else:
                columns.append(
                    _Column(f"{spec.name}.mean", NUMERIC, _image_stat(spec.name, "mean"))
                )
                columns.append(_Column(f"{spec.name}.std", NUMERIC, _image_stat(spec.name, "std")))
        return columns

    def _output_columns(self, embedding: str) -> list[_Column]:
        columns: list[_Column] = []
        for spec in self.config.outputs:
            if spec.name == embedding:
                continue
            width = spec.dims[-1] if spec.dims else 1
            floating = np.issubdtype(spec.datatype.numpy, np.floating)
            if floating and (width > 1 or width == -1) and len(spec.dims) == 1:
                columns.append(_Column(f"{spec.name}.class", CATEGORICAL, _argmax(spec.name)))
                columns.append(_Column(f"{spec.name}.score", NUMERIC, _max(spec.name)))
            elif int(np.prod(spec.dims or (1,))) == 1:
                kind = NUMERIC if floating else CATEGORICAL
                columns.append(_Column(spec.name, kind, _element(spec.name, 0)))
        return columns

    def _wants_embedding(self, processing: Any) -> bool:
        from forwardpass.processing.image import ImageInput
        from forwardpass.processing.text import TextInput

        return self.config.backend == "onnxruntime" and any(
            isinstance(p, ImageInput | TextInput) for p in processing.inputs
        )

    @property
    def has_embedding(self) -> bool:
        return self.embedding_output is not None or self.extractor is not None

    # ------------------------------------------------------------------ use
    def profile(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> Profile:
        """The features of one batch: model inputs, raw model outputs, processing side data."""
        tensors: dict[str, np.ndarray] = {}
        for source in (inputs, outputs):
            for k, v in source.items():
                tensors[k] = _rows(v, self.batching)
        for k, v in (extra or {}).items():
            tensors[k] = np.asarray(v).reshape(-1, *np.shape(v)[-1:])
        features = {c.name: np.asarray(c.fn(tensors)).reshape(-1) for c in self.columns}
        embedding: np.ndarray | None = None
        if self.embedding_output is not None:
            e = tensors[self.embedding_output]
            embedding = e.reshape(len(e), -1).astype(np.float32)
        elif self.extractor is not None:
            embedding = self.extractor({k: np.asarray(inputs[k]) for k in inputs})
            if not self.batching:
                embedding = embedding.reshape(1, -1)
        return Profile(features, embedding)


# ---------------------------------------------------------------------- column functions
def _tabular(target: str, j: int) -> Any:
    return lambda t: t[target].reshape(len(t[target]), -1)[:, j].astype(np.float64)


def _element(name: str, j: int) -> Any:
    def fn(t: Mapping[str, np.ndarray]) -> np.ndarray:
        a = t[name]
        flat = a.reshape(len(a), -1)
        column = flat[:, j]
        return column.astype(np.float64) if not _is_categorical(a) else column

    return fn


def _image_stat(target: str, how: str) -> Any:
    def fn(t: Mapping[str, np.ndarray]) -> np.ndarray:
        a = t[target]
        flat = a.reshape(len(a), -1).astype(np.float64)
        return flat.mean(axis=1) if how == "mean" else flat.std(axis=1)

    return fn


def _extra(key: str, j: int) -> Any:
    def fn(t: Mapping[str, np.ndarray]) -> np.ndarray:
        if key not in t:
            raise KeyError(f"{key} (the image step's geometry) is missing from the record")
        return t[key][:, j].astype(np.float64)

    return fn


def _mask(t: Mapping[str, np.ndarray], ids: str, mask: str | None) -> np.ndarray:
    a = t[ids]
    a = a.reshape(len(a), -1)
    if mask is not None and mask in t:
        return t[mask].reshape(a.shape) != 0
    return a != 0


def _tokens(ids: str, mask: str | None) -> Any:
    return lambda t: _mask(t, ids, mask).sum(axis=1).astype(np.float64)


def _distinct(ids: str, mask: str | None) -> Any:
    def fn(t: Mapping[str, np.ndarray]) -> np.ndarray:
        a = t[ids].reshape(len(t[ids]), -1)
        m = _mask(t, ids, mask)
        out = np.zeros(len(a))
        for i in range(len(a)):
            row = a[i][m[i]]
            out[i] = len(np.unique(row)) / len(row) if len(row) else 0.0
        return out

    return fn


def _unknown(ids: str, mask: str | None, unk: int) -> Any:
    def fn(t: Mapping[str, np.ndarray]) -> np.ndarray:
        a = t[ids].reshape(len(t[ids]), -1)
        m = _mask(t, ids, mask)
        return ((a == unk) & m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)

    return fn


def _unknown_id(tokenizer: Any) -> int | None:
    for token in ("[UNK]", "<unk>", "<UNK>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return None


def _argmax(name: str) -> Any:
    return lambda t: t[name].reshape(len(t[name]), -1).argmax(axis=1).astype(np.int64)


def _max(name: str) -> Any:
    return lambda t: t[name].reshape(len(t[name]), -1).max(axis=1).astype(np.float64)


# ---------------------------------------------------------------------- embedding
def penultimate_tensor(model: Any) -> str:
    """The name of the input of the last Gemm/MatMul feeding the graph's first output.

    Walks back from the first output through single-input-path nodes (softmax, reshape,
    add...) until a Gemm or MatMul: its data input is the penultimate activation.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name for i in model.graph.initializer}
    name = model.graph.output[0].name
    for _ in range(64):
        node = producers.get(name)
        if node is None:
            break
        if node.op_type in ("Gemm", "MatMul"):
            return str(node.input[0])
        data = [i for i in node.input if i and i not in initializers and i in producers]
        if not data:
            break
        name = data[0]
    raise InvalidModelConfig(
        "monitoring.drift.embedding is 'auto' but the model's first output does not come "
        "from a Gemm/MatMul layer; name an embedding output or set embedding to 'none'"
    )


class EmbeddingExtractor:
    """A second onnxruntime session of the model that answers its penultimate activations."""

    def __init__(self, model_file: Path, input_names: Sequence[str]) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(model_file))
        self.tensor = penultimate_tensor(model)
        model.graph.output.append(onnx.ValueInfoProto(name=self.tensor))
        options = ort.SessionOptions()
        # Off the request path: keep the monitor from competing with the served model.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {k: inputs[k] for k in self.inputs if k in inputs}
        (out,) = self.session.run([self.tensor], feed)
        out = np.asarray(out, dtype=np.float32)
        return out.reshape(len(out), -1) if out.ndim > 1 else out.reshape(1, -1)
