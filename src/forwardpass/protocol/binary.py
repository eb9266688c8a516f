"""Binary tensor data (Triton's ``binary_tensor_data`` extension): raw blobs to and from NumPy.

A blob is a tensor's elements, little-endian, row-major, without padding; BOOL is one byte
(0 or 1) and each BYTES element is a 4-byte little-endian length followed by its bytes.
Fixed-size blobs decode without a copy: the array is a read-only view of the request body.
"""

from __future__ import annotations

from math import prod

import numpy as np

from forwardpass.datatypes import DataType, deserialize_bytes_tensor, serialize_bytes_tensor
from forwardpass.errors import InternalError, InvalidArgument
from forwardpass.model_config import ModelConfig
from forwardpass.types import Tensor

__all__ = ["array_from_binary", "array_to_binary", "check_output_dtype", "tensor_from_raw_body"]


def array_from_binary(
    name: str, datatype: DataType, shape: tuple[int, ...], blob: bytes | bytearray | memoryview
) -> np.ndarray:
    """Decode the blob of input ``name``; its size must fit ``shape`` exactly."""
    count = prod(shape)
    if datatype is DataType.BYTES:
        try:
            array = deserialize_bytes_tensor(memoryview(blob), count)
        except InvalidArgument as exc:
            raise InvalidArgument(f"input {name!r}: {exc.message}") from None
        return array.reshape(shape)
    expected = count * datatype.itemsize
    if len(blob) != expected:
        raise InvalidArgument(
            f"input {name!r}: binary_data_size is {len(blob)} bytes but shape {list(shape)} "
            f"of {datatype.value} needs {expected}"
        )
    array = np.frombuffer(blob, dtype=datatype.numpy)
    if datatype is DataType.BOOL and array.size and array.view(np.uint8).max() > 1:
        raise InvalidArgument(f"input {name!r}: BOOL bytes must be 0 or 1")
    return array.reshape(shape)


def check_output_dtype(name: str, datatype: DataType, array: np.ndarray) -> None:
    """Refuse an output whose dtype is not its declared one.

    Binary output writes the array's bytes as they are: a dtype that is not the declared one
    would reach the client as garbage, so stop here instead.
    """
    if array.dtype == datatype.numpy or (datatype is DataType.BYTES and array.dtype.kind in "OSU"):
        return
    raise InternalError(
        f"output {name!r} is declared {datatype.value} but the model produced {array.dtype} values"
    )


def array_to_binary(datatype: DataType, array: np.ndarray) -> bytes:
    """The blob of an output tensor."""
    if datatype is DataType.BYTES:
        return serialize_bytes_tensor(array)
    return array.tobytes()


def tensor_from_raw_body(
    body: bytes | bytearray | memoryview, config: ModelConfig | None
) -> Tensor:
    """The single input of a raw binary request (``Inference-Header-Content-Length: 0``).

    The body is the raw bytes of the model's only input, as one batch-1 request: a batch
    dimension of 1 is prepended when the model batches. The one variable dimension a
    non-BYTES input may have is deduced from the body's size; a BYTES input must have shape
    [1] and the whole body is its one element.
    """
    what = "a raw binary request (Inference-Header-Content-Length: 0)"
    if config is None:
        raise InvalidArgument(f"{what} needs the model's configuration to know its input")
    if len(config.inputs) != 1:
        raise InvalidArgument(
            f"{what} is only allowed for a model with exactly one input; model "
            f"{config.name!r} has {len(config.inputs)}"
        )
    spec = config.inputs[0]
    dims = ((1,) if config.max_batch_size > 0 else ()) + tuple(spec.dims)
    size = len(body)
    if spec.datatype is DataType.BYTES:
        if any(d != 1 for d in spec.dims):
            raise InvalidArgument(
                f"{what}: BYTES input {spec.name!r} must have shape [1], the model declares "
                f"{list(spec.dims)}"
            )
        array = np.empty(1, dtype=object)
        array[0] = bytes(body)
        return Tensor(spec.name, spec.datatype, array.reshape(dims))
    variable = [i for i, d in enumerate(dims) if d < 0]
    if len(variable) > 1:
        raise InvalidArgument(
            f"{what}: the shape of input {spec.name!r} cannot be deduced, {list(spec.dims)} "
            "has more than one variable dimension"
        )
    itemsize = spec.datatype.itemsize
    row = itemsize * prod(d for d in dims if d >= 0)
    if variable:
        if (row == 0 and size) or (row and size % row):
            raise InvalidArgument(
                f"{what}: {size} bytes are not a whole number of elements of input "
                f"{spec.name!r} ({spec.datatype.value}, shape {list(dims)})"
            )
        shape = list(dims)
        shape[variable[0]] = size // row if row else 0
        dims = tuple(shape)
    elif size != row:
        raise InvalidArgument(
            f"{what}: input {spec.name!r} ({spec.datatype.value}, shape {list(dims)}) needs "
            f"{row} bytes, the body has {size}"
        )
    return Tensor(spec.name, spec.datatype, array_from_binary(spec.name, spec.datatype, dims, body))
