"""The response of one request: requested outputs in the client's order, shaped as declared,
with Triton's classification extension applied where an output asks for it."""

from __future__ import annotations

from typing import Any

import numpy as np

from forwardpass.datatypes import DataType, bf16_to_float32
from forwardpass.engine.models import LoadedVersion, ModelHandle
from forwardpass.engine.validation import map_variable_dims
from forwardpass.errors import InternalError, InvalidArgument
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.outputs import topk_strings
from forwardpass.types import InferRequest, InferResponse, Tensor

__all__ = ["respond"]


def respond(
    handle: ModelHandle,
    loaded: LoadedVersion,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> InferResponse:
    config = handle.config
    tensors: list[Tensor] = []
    wanted = request.outputs
    if wanted is None:
        for spec in handle.output_specs.values():
            tensors.append(
                Tensor(spec.name, spec.datatype, _shape_out(config, spec, outputs[spec.name]))
            )
    else:
        for out in wanted:
            spec = handle.output_specs[out.name]
            data = _shape_out(config, spec, outputs[out.name])
            if "classification" in out.parameters:
                count = out.parameters["classification"]
                tensors.append(
                    Tensor(out.name, DataType.BYTES, _classify(handle, spec, data, count))
                )
            else:
                tensors.append(Tensor(out.name, spec.datatype, data))
    return InferResponse(
        model_name=handle.name,
        model_version=str(loaded.version),
        outputs=tensors,
        id=request.id,
    )


def _shape_out(config: ModelConfig, spec: TensorSpec, data: np.ndarray) -> np.ndarray:
    """An output with a ``reshape`` goes back to its ``dims``; each ``-1`` of ``dims`` takes the
    size of the matching ``-1`` of the reshape (Triton's ``InferenceResponse::Output::Reshape``).
    """
    if spec.reshape is None:
        return data
    shape = data.shape
    lead, model = (shape[:1], shape[1:]) if config.batching else ((), shape)
    if -1 not in spec.dims:
        return data.reshape(lead + spec.dims)
    if len(model) != len(spec.reshape):
        raise InternalError(
            f"output {spec.name!r} has shape {list(shape)}, but its reshape is {list(spec.reshape)}"
        )
    try:
        return data.reshape(lead + map_variable_dims(model, spec.reshape, spec.dims))
    except (InvalidArgument, ValueError) as exc:
        raise InternalError(f"output {spec.name!r}: {exc}") from exc


def _classify(handle: ModelHandle, spec: TensorSpec, data: np.ndarray, count: Any) -> np.ndarray:
    """Triton's classification extension: top-N as ``"value:index[:label]"`` strings."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgument(
            f"classification for output {spec.name!r} must be a positive integer, got {count!r}"
        )
    if spec.datatype is DataType.BYTES:
        raise InvalidArgument(f"output {spec.name!r} is BYTES and cannot be classified")
    assert handle.entry is not None
    labels = handle.entry.labels.get(spec.name, ())
    batched = handle.config.batching
    rows = data.reshape(data.shape[0], -1) if batched else data.reshape(1, -1)
    if rows.dtype == np.uint16 and spec.datatype is DataType.BF16:
        rows = bf16_to_float32(rows)
    out = topk_strings(rows, count, labels)
    return out if batched else out.reshape(-1)
