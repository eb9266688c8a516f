"""Request validation: every input checked against the model's configuration before it queues.

Names, datatypes, shapes and batch size are checked with messages that name the tensor, what it
has and what the model expects; schedule-policy parameters are read here too. What passes is a
dict of arrays in the model's own dtypes and (reshaped) dims, ready for the batcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from forwardpass.engine.models import ModelHandle
from forwardpass.errors import InvalidArgument
from forwardpass.types import InferRequest

__all__ = ["schedule_params", "validate"]


def _shape_matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if len(shape) != len(dims):
        return False
    return all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def validate(handle: ModelHandle, request: InferRequest) -> dict[str, np.ndarray]:
    """The request's inputs as the model takes them, or :class:`InvalidArgument`."""
    config = handle.config
    specs = handle.input_specs
    batching = config.max_batch_size > 0
    arrays: dict[str, np.ndarray] = {}
    rows = -1
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"unknown input {tensor.name!r} for model {handle.name!r} (expects {sorted(specs)})"
            )
        if tensor.name in arrays:
            raise InvalidArgument(f"input {tensor.name!r} is given twice")
        if tensor.datatype is not spec.datatype:
            raise InvalidArgument(
                f"input {tensor.name!r} has datatype {tensor.datatype.value}, "
                f"model {handle.name!r} expects {spec.datatype.value}"
            )
        data = tensor.data
        shape = data.shape
        if batching:
            if len(shape) == 0:
                raise InvalidArgument(
                    f"input {tensor.name!r} needs a leading batch dimension: shape "
                    f"[batch]+{_fmt(spec.dims)}, got a scalar"
                )
            if shape[0] < 1 or shape[0] > config.max_batch_size:
                raise InvalidArgument(
                    f"input {tensor.name!r}: batch size {shape[0]} is outside 1.."
                    f"{config.max_batch_size} (max_batch_size of model {handle.name!r})"
                )
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidArgument(
                    f"inputs disagree on the batch size ({rows} vs {shape[0]} for {tensor.name!r})"
                )
            if not _shape_matches(shape[1:], spec.dims):
                raise InvalidArgument(
                    f"input {tensor.name!r} has shape {_fmt(shape)}, model {handle.name!r} "
                    f"expects [batch(<= {config.max_batch_size})]+{_fmt(spec.dims)}"
                )
        elif not _shape_matches(shape, spec.dims):
            raise InvalidArgument(
                f"input {tensor.name!r} has shape {_fmt(shape)}, model {handle.name!r} "
                f"expects {_fmt(spec.dims)}"
            )
        if data.dtype != spec.datatype.numpy:
            data = data.astype(spec.datatype.numpy)
        if spec.reshape is not None:
            data = data.reshape((shape[0],) + spec.reshape if batching else spec.reshape)
        arrays[tensor.name] = data
    missing = handle.required - arrays.keys()
    if missing:
        raise InvalidArgument(
            f"model {handle.name!r} needs input(s) {sorted(missing)} that the request lacks"
        )
    if request.outputs is not None:
        for out in request.outputs:
            if out.name not in handle.output_specs:
                raise InvalidArgument(
                    f"unknown output {out.name!r} for model {handle.name!r} "
                    f"(has {list(handle.output_specs)})"
                )
    return arrays


def schedule_params(params: Mapping[str, Any]) -> tuple[int, int | None]:
    """Triton's schedule-policy parameters ``priority`` and ``timeout`` (µs)."""
    priority = params.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidArgument(
            f"parameter priority must be a non-negative integer, got {priority!r}"
        )
    timeout = params.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0
    ):
        raise InvalidArgument(
            f"parameter timeout must be a non-negative integer (µs), got {timeout!r}"
        )
    return priority, timeout
