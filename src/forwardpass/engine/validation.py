"""Request validation: every input checked against the model's configuration before it queues.

Names, datatypes, shapes and batch size are checked with messages that name the tensor, what it
has and what the model expects; schedule-policy parameters are read here too. What passes is a
dict of arrays in the model's own dtypes and (reshaped) dims, ready for the batcher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from forwardpass.engine.models import ModelHandle
from forwardpass.errors import InvalidArgument
from forwardpass.model_config import TensorSpec
from forwardpass.types import InferRequest

__all__ = ["map_variable_dims", "schedule_params", "validate"]


def _shape_matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if len(shape) != len(dims):
        return False
    return all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _names(names: Any) -> str:
    """Triton's list of names: ``['a','b']``."""
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


def map_variable_dims(
    shape: tuple[int, ...], source: tuple[int, ...], target: tuple[int, ...]
) -> tuple[int, ...]:
    """``shape`` (which fits ``source``) as ``target``: each ``-1`` of ``target`` takes the size
    of the matching ``-1`` of ``source``, in order, as Triton maps dims to reshape (and back).

    Config validation makes both hold the same number of ``-1`` with equal fixed sizes between
    them; were that not so, a single ``-1`` of ``target`` is resolved from the element count.
    """
    sizes = [s for s, d in zip(shape, source, strict=True) if d == -1]
    if len(sizes) == target.count(-1):
        it = iter(sizes)
        return tuple(next(it) if d == -1 else d for d in target)
    if target.count(-1) == 1:
        known = math.prod(d for d in target if d != -1)
        total = math.prod(shape)
        if known and total % known == 0:
            return tuple(total // known if d == -1 else d for d in target)
    raise InvalidArgument(f"shape {_fmt(shape)} cannot be reshaped to {_fmt(target)}")


def validate(handle: ModelHandle, request: InferRequest) -> dict[str, np.ndarray]:
    """The request's inputs as the model takes them, or :class:`InvalidArgument`.

    Each message begins with Triton's own (core ``InferenceRequest::Normalize``), so clients
    and tests that match on Triton's text match here; forwardpass's detail follows it. Checks
    run in Triton's order: requested outputs, the number of inputs, then each input.
    """
    config = handle.config
    specs = handle.input_specs
    batching = config.max_batch_size > 0
    name = handle.name
    if request.outputs is not None:
        for out in request.outputs:
            if out.name not in handle.output_specs:
                raise InvalidArgument(
                    f"unexpected inference output '{out.name}' for model '{name}' "
                    f"(the model's outputs are {_names(handle.output_specs)})"
                )
    count = len(request.inputs)
    if count > len(specs) or count < len(handle.required):
        raise _input_count(handle, request)
    arrays: dict[str, np.ndarray] = {}
    rows = -1
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{tensor.name}' for model '{name}' "
                f"(the model's inputs are {_names(specs)})"
            )
        if tensor.name in arrays:
            raise InvalidArgument(f"input '{tensor.name}' already exists in request")
        data = tensor.data
        shape = data.shape
        if batching:
            if len(shape) == 0:
                raise InvalidArgument(
                    f"input '{tensor.name}' has no shape but model requires batch dimension "
                    f"for '{name}' (shape [batch]+{_fmt(spec.dims)}, got a scalar)"
                )
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidArgument(
                    f"input '{tensor.name}' batch size does not match other inputs for "
                    f"'{name}' ({shape[0]} vs {rows})"
                )
            if shape[0] > config.max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {config.max_batch_size} for "
                    f"'{name}' (input '{tensor.name}' has batch size {shape[0]})"
                )
            if shape[0] < 1:
                raise InvalidArgument(
                    f"input '{tensor.name}': batch size {shape[0]} is outside 1.."
                    f"{config.max_batch_size} (max_batch_size of model '{name}')"
                )
        if tensor.datatype is not spec.datatype:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype.value}', but "
                f"model '{name}' expects '{spec.datatype.value}'"
            )
        if not _shape_matches(shape[1:] if batching else shape, spec.dims):
            expected = ((-1,) if batching else ()) + spec.dims
            note = _BATCH_NOTE if batching else ""
            raise InvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{name}'. Expected "
                f"{_fmt(expected)}, got {_fmt(shape)}. {note}"
            )
        if data.dtype != spec.datatype.numpy:
            data = data.astype(spec.datatype.numpy)
        if spec.reshape is not None:
            data = data.reshape(_model_shape(shape, spec, batching))
        arrays[tensor.name] = data
    if len(arrays) < len(handle.required) or not handle.required <= arrays.keys():
        raise _input_count(handle, request)
    return arrays


#: Triton's note on a shape mismatch of a batching model, word for word.
_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
    "to be prepended to each input shape. If you want to specify the full shape including the "
    "batch dim in your input dims config, try setting max_batch_size to zero. See the model "
    "configuration docs for more info on max_batch_size."
)


def _model_shape(shape: tuple[int, ...], spec: TensorSpec, batching: bool) -> tuple[int, ...]:
    """The shape the model sees for an input with a ``reshape``."""
    assert spec.reshape is not None
    lead, dims = (shape[:1], shape[1:]) if batching else ((), shape)
    if -1 not in spec.reshape:
        return lead + spec.reshape
    return lead + map_variable_dims(dims, spec.dims, spec.reshape)


def _input_count(handle: ModelHandle, request: InferRequest) -> InvalidArgument:
    """Triton's message for a request that lacks required inputs (or has too many)."""
    given = [t.name for t in request.inputs]
    missing = [
        s.name for s in handle.input_specs.values() if not s.optional and s.name not in given
    ]
    total, required = len(handle.input_specs), len(handle.required)
    expected = (
        f"expected {total} inputs"
        if total == required
        else f"expected number of inputs between {required} and {total}"
    )
    unknown = [n for n in given if n not in handle.input_specs]
    detail = (
        f" (unexpected input(s) {_names(unknown)}; the model's inputs are "
        f"{_names(handle.input_specs)})"
        if unknown
        else ""
    )
    return InvalidArgument(
        f"{expected} but got {len(given)} inputs for model '{handle.name}'. Got input(s) "
        f"{_names(given)}, but missing required input(s) {_names(missing)}. Please provide all "
        f"required input(s).{detail}"
    )


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
