"""Tensor datatypes: protocol names, model-config names, NumPy dtypes and raw encodings.

The Open Inference Protocol names (``FP32``, ``BYTES`` ...) are the canonical ones. NumPy has
no bfloat16, so a BF16 tensor is carried as ``uint16`` holding the upper half of an IEEE float32
(the bit pattern ONNX Runtime and the wire both use); :func:`bf16_from_float32` and
:func:`bf16_to_float32` convert. BYTES tensors are NumPy ``object`` arrays of ``bytes``.
"""

from __future__ import annotations

import enum
import struct

import numpy as np

from forwardpass.errors import InvalidArgument

__all__ = [
    "DataType",
    "bf16_from_float32",
    "bf16_to_float32",
    "deserialize_bytes_tensor",
    "serialize_bytes_tensor",
]


class DataType(enum.Enum):
    """A tensor element type, named as the Open Inference Protocol names it."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    BF16 = "BF16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy(self) -> np.dtype:
        """The NumPy dtype that holds this type in memory."""
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element on the wire; 0 for the variable-length BYTES."""
        return 0 if self is DataType.BYTES else _TO_NUMPY[self].itemsize

    @property
    def config_name(self) -> str:
        """The Triton model-configuration name (``TYPE_FP32``, ``TYPE_STRING`` ...)."""
        return "TYPE_STRING" if self is DataType.BYTES else "TYPE_" + self.value

    @property
    def is_float(self) -> bool:
        return self in (DataType.FP16, DataType.BF16, DataType.FP32, DataType.FP64)

    @classmethod
    def parse(cls, name: str) -> DataType:
        """A protocol name (``FP32``) or config name (``TYPE_FP32``, ``TYPE_STRING``)."""
        try:
            return _BY_NAME[name]
        except (KeyError, TypeError):
            raise InvalidArgument(f"unknown datatype {name!r}") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DataType:
        """The protocol type for a NumPy dtype (``uint16`` maps to UINT16, never BF16)."""
        dtype = np.dtype(dtype)
        if dtype.kind in ("O", "S", "U"):
            return DataType.BYTES
        try:
            return _FROM_NUMPY[dtype]
        except KeyError:
            raise InvalidArgument(f"no protocol datatype for numpy dtype {dtype}") from None


_TO_NUMPY: dict[DataType, np.dtype] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.UINT16: np.dtype(np.uint16),
    DataType.UINT32: np.dtype(np.uint32),
    DataType.UINT64: np.dtype(np.uint64),
    DataType.INT8: np.dtype(np.int8),
    DataType.INT16: np.dtype(np.int16),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT64: np.dtype(np.int64),
    DataType.FP16: np.dtype(np.float16),
    DataType.BF16: np.dtype(np.uint16),
    DataType.FP32: np.dtype(np.float32),
    DataType.FP64: np.dtype(np.float64),
    DataType.BYTES: np.dtype(object),
}
_FROM_NUMPY: dict[np.dtype, DataType] = {
    dt: t for t, dt in _TO_NUMPY.items() if t not in (DataType.BF16, DataType.BYTES)
}
_BY_NAME: dict[str, DataType] = {t.value: t for t in DataType}
_BY_NAME.update({t.config_name: t for t in DataType})


def bf16_from_float32(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even), returned as uint16 bit patterns."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


_LEN = struct.Struct("<I")


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor as the wire does: each element a 4-byte LE length, then its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, bytes | bytearray):
            item = str(item).encode("utf-8")
        parts.append(_LEN.pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Decode length-prefixed BYTES elements into a flat object array.

    With ``count`` the buffer must hold exactly that many elements; every length is checked
    against what remains, so a corrupt length is an error, never an over-read.
    """
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if end - offset < 4:
            raise InvalidArgument(
                f"BYTES data truncated: {end - offset} trailing byte(s) cannot hold a 4-byte length"
            )
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if length > end - offset:
            raise InvalidArgument(
                f"BYTES element {len(items)} declares {length} bytes but only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidArgument(f"BYTES data holds {len(items)} element(s), shape needs {count}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
