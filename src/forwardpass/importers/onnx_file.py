"""Importing an existing ONNX file: check it, run it, copy it, complete its config.

There is no original to compare with, so verification checks what serving relies on: the
file passes ``onnx.checker``, ONNX Runtime runs it on sample inputs, and, when the model
batches (every tensor has a dynamic leading dimension), running the rows of a batch one by
one gives the same outputs as running them together, which the dynamic batcher assumes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from forwardpass.errors import InvalidArgument
from forwardpass.importers.entry import ImportResult, save_entry
from forwardpass.importers.verification import compare, run_onnx, synthesize
from forwardpass.runtime.base import BackendIO
from forwardpass.runtime.onnx import describe_onnx

__all__ = ["DEFAULT_ATOL", "import_onnx", "match_labels", "read_labels", "validate_onnx"]

#: Batched vs row-by-row runs of the same fp32 graph differ only by kernel blocking.
DEFAULT_ATOL = 1e-5


def validate_onnx(source: Path, target: Path) -> None:
    """Check ``source`` with ``onnx.checker`` and write it as one self-contained file."""
    import onnx

    if not source.is_file():
        raise InvalidArgument(f"{source}: no such file")
    try:
        model = onnx.load(str(source))  # external data, if any, is read from beside it
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError ...
        raise InvalidArgument(f"{source} is not a valid ONNX model: {exc}") from exc
    try:
        onnx.save(model, str(target))
    except ValueError as exc:  # larger than protobuf's 2 GiB
        raise InvalidArgument(
            f"{source} is too large for one file; external-data models are not supported yet"
        ) from exc


def batchable(io: BackendIO) -> bool:
    """Whether every input and output has a dynamic leading (batch) dimension."""
    tensors = io.inputs + io.outputs
    return bool(io.inputs) and all(t.dims and t.dims[0] == -1 for t in tensors)


def read_labels(path: Path) -> list[str]:
    """Class names from a text file, one per line."""
    try:
        labels = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read labels file {path}: {exc}") from exc
    if not any(label.strip() for label in labels):
        raise InvalidArgument(f"labels file {path} is empty")
    return labels


def match_labels(io: BackendIO, labels: Sequence[str], output: str | None) -> str:
    """The output ``labels`` describe: ``output`` when given, else the first whose last
    dimension has one entry per label."""
    if output is not None:
        if not any(o.name == output for o in io.outputs):
            raise InvalidArgument(f"the model has no output {output!r} to attach labels to")
        return output
    for spec in io.outputs:
        if spec.dims and spec.dims[-1] == len(labels):
            return spec.name
    raise InvalidArgument(
        f"no output has a last dimension of {len(labels)} (one per label); name it with "
        "--labels-output"
    )


def _row_by_row(model: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    rows = next(iter(inputs.values())).shape[0]
    runs = [run_onnx(model, {k: v[i : i + 1] for k, v in inputs.items()}) for i in range(rows)]
    return {name: np.concatenate([run[name] for run in runs]) for name in runs[0]}


def import_onnx(
    source: Path,
    *,
    repository: Path,
    name: str,
    samples: Mapping[str, np.ndarray] | None = None,
    labels: Sequence[str] | None = None,
    labels_output: str | None = None,
    max_batch_size: int | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = 0.0,
    version: int | None = None,
) -> ImportResult:
    """Import the ONNX file ``source`` as model ``name`` of ``repository``."""
    with tempfile.TemporaryDirectory(prefix="forwardpass-import-") as tmp:
        model_file = Path(tmp) / "model.onnx"
        validate_onnx(source, model_file)
        io = describe_onnx(model_file)
        batched = batchable(io) and max_batch_size != 0
        inputs = dict(samples) if samples else synthesize(io.inputs, batched=batched)
        missing = sorted({s.name for s in io.inputs if not s.optional} - set(inputs))
        if missing:
            raise InvalidArgument(f"no sample for input(s) {missing}")
        outputs = run_onnx(model_file, inputs)
        rows = min((v.shape[0] for v in inputs.values() if v.ndim), default=1)
        notes = []
        if batched and rows > 1:
            reference = _row_by_row(model_file, inputs)
        else:
            # Nothing to compare against: a second run checks the model is deterministic.
            reference = run_onnx(model_file, inputs)
            notes.append("no batch dimension: checked that the model runs and is deterministic")
        verification = compare(reference, outputs, atol=atol, rtol=rtol)
        labels_for = match_labels(io, labels, labels_output) if labels else None
        return save_entry(
            "onnx",
            repository,
            name,
            model_file,
            verification,
            max_batch_size=max_batch_size,
            labels=labels,
            labels_for=labels_for,
            version=version,
            notes=notes,
        )
