"""How the requests of one batch become the model's inputs, and its outputs become theirs.

Ordinary inputs are concatenated along the batch (first) axis, and every output is split
back by rows. Three of Triton's config features change that (``docs/user_guide/
ragged_batching.md``, ``model_config.proto`` ``BatchInput``/``BatchOutput``):

* an input with ``allow_ragged_batch`` may differ in shape between the requests of a batch;
  the model receives the requests' elements concatenated into one flat (1-D) tensor;
* a ``batch_input`` is an extra model input computed for the batch from one source input:
  each request's element count (``BATCH_ELEMENT_COUNT``), their running total with or without
  a leading zero (``BATCH_ACCUMULATED_ELEMENT_COUNT[_WITH_ZERO]``), a tensor shaped
  ``[max element count]`` (``BATCH_MAX_ELEMENT_COUNT_AS_SHAPE``), or each batch item's shape,
  one row per item or flattened (``BATCH_ITEM_SHAPE[_FLATTEN]``);
* a ``batch_output`` of kind ``BATCH_SCATTER_WITH_INPUT_SHAPE`` is split by the source input's
  elements instead of by rows: each request gets as many entries of the output's first axis as
  its source input has elements, shaped like that input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from forwardpass.errors import InternalError
from forwardpass.model_config import BatchInput, BatchOutput, ModelConfig
from forwardpass.runtime.base import NamedArrays

__all__ = ["BatchLayout"]


@dataclass(frozen=True, slots=True)
class BatchLayout:
    """What a model config says about merging requests beyond "stack the rows"."""

    #: Inputs with ``allow_ragged_batch``.
    ragged: frozenset[str] = frozenset()
    batch_input: tuple[BatchInput, ...] = ()
    batch_output: tuple[BatchOutput, ...] = ()

    @classmethod
    def from_config(cls, config: ModelConfig) -> BatchLayout:
        return cls(
            ragged=frozenset(s.name for s in config.inputs if s.allow_ragged_batch),
            batch_input=config.batch_input,
            batch_output=config.batch_output,
        )

    @property
    def plain(self) -> bool:
        """Rows in, rows out: nothing beyond concatenating and splitting along axis 0."""
        return not (self.ragged or self.batch_input or self.batch_output)

    def signature(self, inputs: NamedArrays, batching: bool) -> tuple[object, ...]:
        """What two requests must share to be merged: names, dtypes, non-batch dims.

        A ragged input's dims are left out, so requests that differ only there share a batch.
        """
        if not batching:
            return tuple((name, a.dtype.str, a.shape) for name, a in inputs.items())
        ragged = self.ragged
        return tuple(
            (name, a.dtype.str, None if name in ragged else a.shape[1:])
            for name, a in inputs.items()
        )

    # ------------------------------------------------------------------ merge
    def merge(self, parts: Sequence[NamedArrays]) -> NamedArrays:
        """The model's inputs for the requests ``parts`` (in order)."""
        if len(parts) == 1 and self.plain:
            return parts[0]
        merged: NamedArrays = {}
        for name in parts[0]:
            arrays = [p[name] for p in parts]
            if name in self.ragged:
                merged[name] = np.concatenate([a.reshape(-1) for a in arrays])
            elif len(arrays) == 1:
                merged[name] = arrays[0]
            else:
                merged[name] = np.concatenate(arrays, axis=0)
        for spec in self.batch_input:
            value = _batch_input(spec.kind, [p[spec.source_input[0]] for p in parts])
            value = value.astype(spec.data_type.numpy, copy=False)
            for target in spec.target_name:
                merged[target] = value
        return merged

    # ------------------------------------------------------------------ split
    def split(
        self, outputs: NamedArrays, parts: Sequence[NamedArrays], rows: Sequence[int], model: str
    ) -> list[NamedArrays]:
        """Each request's outputs. Raises :class:`InternalError` when an output cannot be split."""
        if len(parts) == 1 and self.plain:
            return [outputs]
        scatter = {t: b.source_input[0] for b in self.batch_output for t in b.target_name}
        result: list[NamedArrays] = [{} for _ in parts]
        total = sum(rows)
        for name, array in outputs.items():
            source = scatter.get(name)
            if source is not None:
                counts = [p[source].size for p in parts]
                if array.ndim == 0 or array.shape[0] != sum(counts):
                    raise InternalError(
                        f"model {model}: output {name!r} has leading dimension "
                        f"{array.shape[0] if array.ndim else 'none'}, but its batch_output "
                        f"scatters it by the {sum(counts)} elements of input {source!r}"
                    )
                offset = 0
                for out, part, count in zip(result, parts, counts, strict=True):
                    piece = array[offset : offset + count]
                    out[name] = piece.reshape(part[source].shape + array.shape[1:])
                    offset += count
                continue
            if len(parts) == 1:
                result[0][name] = array
                continue
            if array.ndim == 0 or array.shape[0] != total:
                raise InternalError(
                    f"model {model}: output {name!r} has leading dimension "
                    f"{array.shape[0] if array.ndim else 'none'} for a batch of {total} rows; "
                    "the model does not batch along its first axis"
                )
            offset = 0
            for out, count in zip(result, rows, strict=True):
                out[name] = array[offset : offset + count]
                offset += count
        return result


def _batch_input(kind: str, sources: Sequence[np.ndarray]) -> np.ndarray:
    """One ``batch_input`` for a batch whose requests carry ``sources`` (batch axis first)."""
    counts = np.array([a.size for a in sources], dtype=np.int64)
    if kind == "BATCH_ELEMENT_COUNT":
        return counts
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
        return np.cumsum(counts)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
        return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])
    if kind == "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE":
        # Only the shape carries information (Triton leaves the contents uninitialized).
        return np.zeros(int(counts.max()), dtype=np.int64)
    if kind in ("BATCH_ITEM_SHAPE", "BATCH_ITEM_SHAPE_FLATTEN"):
        # One row per batch item: a request of batch 2 contributes its item shape twice.
        shapes = np.array(
            [a.shape[1:] for a in sources for _ in range(a.shape[0])], dtype=np.int64
        ).reshape(-1, sources[0].ndim - 1)
        return shapes.reshape(-1) if kind == "BATCH_ITEM_SHAPE_FLATTEN" else shapes
    raise InternalError(f"unknown batch_input kind {kind!r}")
