"""Tensor data in JSON: the ``"data"`` array of a tensor, to and from NumPy.

Decoding is strict, because a lenient decoder gives wrong answers without telling anyone:
300 never becomes an INT8, ``true`` never becomes 1.0, ``"1.5"`` never becomes a float, 2.5
never becomes an integer, and a value too large for FP16/FP32 is an error, not infinity.
What JSON allows is allowed: integral numbers (``2`` or ``2.0``) into integer types, any number
into float types (FP16/BF16 included), ``true``/``false`` into BOOL, strings into BYTES.

Encoding hands NumPy arrays straight to orjson (``OPT_SERIALIZE_NUMPY``), which writes them
in C; BF16 goes out as float32 values and BYTES as UTF-8 strings.
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType, bf16_from_float32, bf16_to_float32
from forwardpass.errors import InvalidArgument

__all__ = ["array_from_json", "array_to_json"]

_NUMBER = frozenset((int, float))
_INT = frozenset((int,))
_BOOL = frozenset((bool,))
_STR = frozenset((str,))

#: Triton's message (server ``http_server.cc``) when 'data' holds more or fewer elements than
#: 'shape' says.
_SHAPE_MISMATCH = "Unable to parse 'data': Shape does not match true shape of 'data' field"

#: How JSON names the Python types orjson produces, for error messages.
_JSON_NAME: dict[type, str] = {
    bool: "booleans",
    int: "numbers",
    float: "numbers",
    str: "strings",
    type(None): "nulls",
    dict: "objects",
    list: "arrays",
}


def array_from_json(name: str, datatype: DataType, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Convert the ``"data"`` of input ``name`` to an array of ``shape`` and ``datatype``.

    ``data`` is flat or nested (row-major either way); only the element count must match.
    """
    if type(data) is not list:
        raise InvalidArgument(
            f"input {name!r}: 'data' must be a JSON array, got {_json_kind(data)}"
        )
    flat = _flatten(name, data) if data and type(data[0]) is list else data
    types = set(map(type, flat))
    if list in types:
        raise InvalidArgument(
            f"input {name!r}: 'data' is ragged: nested arrays must all have the same length "
            "and depth"
        )
    if len(flat) != prod(shape):
        # Triton's text exactly (its QA suite L0_http matches the whole error body); the
        # shape and the count are in the request the client sent.
        raise InvalidArgument(_SHAPE_MISMATCH)
    return _CONVERT[datatype](name, datatype, flat, types).reshape(shape)


def array_to_json(name: str, datatype: DataType, array: np.ndarray) -> Any:
    """A flat value orjson serializes as the output's ``"data"``: an array or a list of str."""
    if datatype is DataType.BYTES:
        return [_to_str(name, item) for item in array.ravel().tolist()]
    if datatype is DataType.BF16:
        return bf16_to_float32(array.ravel())
    return array.ravel()


def _flatten(name: str, data: list) -> list:
    # An object array keeps every element as the very Python object orjson made, so the type
    # checks below still see bools and strings; raggedness shows up as a ValueError or as
    # lists left among the elements.
    try:
        nested = np.array(data, dtype=object)
    except ValueError:
        raise InvalidArgument(
            f"input {name!r}: 'data' is ragged: nested arrays must all have the same length "
            "and depth"
        ) from None
    return nested.reshape(-1).tolist()


def _json_kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        type(None): "null",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _reject(name: str, datatype: DataType, types: set[type], allowed: frozenset[type]) -> None:
    bad = sorted({_JSON_NAME.get(t, t.__name__) for t in types - allowed})
    hint = {
        DataType.BOOL: " (use true/false)",
        DataType.BYTES: " (send each element as a JSON string)",
    }.get(datatype, "")
    raise InvalidArgument(
        f"input {name!r}: {' and '.join(bad)} are not valid in a {datatype.value} tensor{hint}"
    )


def _floats(name: str, datatype: DataType, flat: list, types: set[type]) -> np.ndarray:
    if not types <= _NUMBER:
        _reject(name, datatype, types, _NUMBER)
    try:
        if datatype is DataType.FP64:
            return np.array(flat, dtype=np.float64)
        # Overflow to infinity is an error, not a value (and never a RuntimeWarning).
        with np.errstate(over="raise"):
            array = np.array(flat, dtype=_NARROW[datatype])
    except (OverflowError, FloatingPointError):
        raise InvalidArgument(
            f"input {name!r}: a value is out of range for {datatype.value}"
        ) from None
    if datatype is DataType.BF16:
        bits = bf16_from_float32(array)
        # float32 values just below FLT_MAX round up to bfloat16 infinity.
        overflow = ((bits & 0x7FFF) == 0x7F80) & np.isfinite(array)
        if overflow.any():
            raise InvalidArgument(f"input {name!r}: a value is out of range for BF16")
        return bits
    return array


#: The float dtype JSON numbers are first converted to (BF16 goes through float32).
_NARROW = {DataType.FP16: np.float16, DataType.FP32: np.float32, DataType.BF16: np.float32}


def _integers(name: str, datatype: DataType, flat: list, types: set[type]) -> np.ndarray:
    if float in types:
        if not types <= _NUMBER:
            _reject(name, datatype, types, _NUMBER)
        flat = [_integral(name, datatype, x) if type(x) is float else x for x in flat]
    elif not types <= _INT:
        _reject(name, datatype, types, _INT)
    if flat:
        # Checked here rather than left to NumPy: NumPy 1.x wraps out-of-range values silently.
        info = np.iinfo(datatype.numpy)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidArgument(
                f"input {name!r}: value {bad} is out of range for {datatype.value} "
                f"[{info.min}, {info.max}]"
            )
    return np.array(flat, dtype=datatype.numpy)


def _integral(name: str, datatype: DataType, value: float) -> int:
    if not value.is_integer():  # also NaN and infinity
        raise InvalidArgument(
            f"input {name!r}: {value!r} is not an integer, as {datatype.value} needs"
        )
    return int(value)


def _bools(name: str, datatype: DataType, flat: list, types: set[type]) -> np.ndarray:
    if not types <= _BOOL:
        _reject(name, datatype, types, _BOOL)
    return np.array(flat, dtype=np.bool_)


def _bytes(name: str, datatype: DataType, flat: list, types: set[type]) -> np.ndarray:
    if not types <= _STR:
        _reject(name, datatype, types, _STR)
    array = np.empty(len(flat), dtype=object)
    try:
        array[:] = [item.encode("utf-8") for item in flat]
    except UnicodeEncodeError as exc:  # a lone surrogate escape such as "\ud800"
        raise InvalidArgument(f"input {name!r}: a string is not valid UTF-8: {exc}") from None
    return array


def _to_str(name: str, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output {name!r} holds bytes that are not valid UTF-8 and cannot be sent as "
                "JSON; request it with the parameter binary_data=true"
            ) from None
    if isinstance(item, str):
        return item
    return str(item)


_CONVERT = {
    DataType.BOOL: _bools,
    DataType.UINT8: _integers,
    DataType.UINT16: _integers,
    DataType.UINT32: _integers,
    DataType.UINT64: _integers,
    DataType.INT8: _integers,
    DataType.INT16: _integers,
    DataType.INT32: _integers,
    DataType.INT64: _integers,
    DataType.FP16: _floats,
    DataType.BF16: _floats,
    DataType.FP32: _floats,
    DataType.FP64: _floats,
    DataType.BYTES: _bytes,
}
