"""Readers for the scalar and container fields of a config dict, with the field's path in errors.

Each reader accepts every spelling the config sources use for a value (see
:mod:`forwardpass.repository.config_io`) and raises :class:`InvalidModelConfig` naming the
field's path (``dynamic_batching.default_queue_policy.max_queue_size``) when it cannot.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

from forwardpass.datatypes import DataType
from forwardpass.errors import ForwardpassError, InvalidModelConfig

__all__ = [
    "as_bool",
    "as_datatype",
    "as_enum",
    "as_int",
    "as_shape",
    "as_str",
    "as_text",
    "config_error",
    "is_default",
    "is_map_entry",
    "join",
    "map_entries",
    "message_fields",
    "repeated",
    "single",
    "string_map",
]

log = logging.getLogger("forwardpass.repository")

#: Triton's ``DataType`` enum numbers, for configs that write enums as numbers.
_DATATYPE_NUMBERS = {
    1: DataType.BOOL,
    2: DataType.UINT8,
    3: DataType.UINT16,
    4: DataType.UINT32,
    5: DataType.UINT64,
    6: DataType.INT8,
    7: DataType.INT16,
    8: DataType.INT32,
    9: DataType.INT64,
    10: DataType.FP16,
    11: DataType.FP32,
    12: DataType.FP64,
    13: DataType.BYTES,
    14: DataType.BF16,
}


def config_error(path: str, message: str) -> InvalidModelConfig:
    return InvalidModelConfig(f"{path}: {message}" if path else message)


def is_default(value: Any) -> bool:
    """Whether a value is protobuf's default (so setting it changes nothing)."""
    if isinstance(value, Mapping):
        return all(is_default(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return value in (None, "", 0, False)


def message_fields(
    value: Any,
    path: str,
    known: Collection[str],
    ignored: Collection[str] = (),
) -> dict[str, Any]:
    """Check that ``value`` is a message with only ``known``/``ignored`` fields; drop ignored."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise config_error(path, f"expected a message ({{ ... }}), got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in known:
            out[key] = item
        elif key in ignored:
            if not is_default(item):
                log.warning("model config field %s is not supported; ignored", join(path, key))
        else:
            close = difflib.get_close_matches(str(key), [*known, *ignored], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f" in {path}" if path else ""
            raise InvalidModelConfig(f"unknown field {key!r}{where}{hint}")
    return out


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def single(value: Any, path: str) -> Any:
    if isinstance(value, list):
        raise config_error(
            path, "expected a single value, got several (is the field written twice?)"
        )
    return value


def repeated(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def as_int(value: Any, path: str, minimum: int | None = None) -> int:
    value = single(value, path)
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise config_error(path, f"expected an integer, got {value!r}")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise config_error(path, f"expected an integer, got {value!r}")
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise config_error(path, f"expected an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise config_error(path, f"must be >= {minimum}, got {value}")
    return value


def as_bool(value: Any, path: str) -> bool:
    value = single(value, path)
    if isinstance(value, bool):
        return value
    if value in (0, 1) and isinstance(value, int):
        return bool(value)
    if isinstance(value, str) and value in ("true", "True", "t", "false", "False", "f"):
        return value in ("true", "True", "t")
    raise config_error(path, f"expected true or false, got {value!r}")


def as_str(value: Any, path: str) -> str:
    value = single(value, path)
    if not isinstance(value, str):
        raise config_error(path, f"expected a string, got {value!r}")
    return value


def as_text(value: Any, path: str) -> str:
    """A string parameter value; YAML's plain scalars (1, true, 0.5) are read as their text."""
    value = single(value, path)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise config_error(path, f"expected a string, got {value!r}")


def as_enum(value: Any, path: str, names: tuple[str, ...], prefix: str = "") -> str:
    value = single(value, path)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str):
        if value in names:
            return value
        if prefix and prefix + value in names:
            return prefix + value
    raise config_error(path, f"expected one of {', '.join(names)}, got {value!r}")


def as_datatype(value: Any, path: str) -> DataType:
    value = single(value, path)
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _DATATYPE_NUMBERS:
            return _DATATYPE_NUMBERS[value]
    elif isinstance(value, str) and value not in ("TYPE_INVALID", "STRING"):
        try:
            return DataType.parse(value)
        except ForwardpassError:
            pass
    raise config_error(path, f"unknown data_type {value!r} (expected TYPE_FP32, TYPE_STRING, ...)")


def as_shape(value: Any, path: str, *, concrete: bool = False) -> tuple[int, ...]:
    dims = tuple(as_int(d, f"{path}[{i}]") for i, d in enumerate(repeated(value)))
    for i, dim in enumerate(dims):
        if dim == 0 or dim < -1 or (concrete and dim < 1):
            allowed = "positive" if concrete else "positive or -1 (variable)"
            raise config_error(path, f"dimension {i} is {dim}; dimensions must be {allowed}")
    return dims


def is_map_entry(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and "key" in value
        and set(value) <= {"key", "value"}
        and not isinstance(value["key"], Mapping | list)
    )


def map_entries(value: Any, path: str) -> list[tuple[Any, Any, str]]:
    """(key, value, path) of each entry of a map field, whichever way it is written."""
    if value is None:
        return []
    if isinstance(value, Mapping) and not is_map_entry(value):
        return [(k, v, f"{path}[{k!r}]") for k, v in value.items()]
    items: list[tuple[Any, Any, str]] = []
    seen: set[Any] = set()
    for i, entry in enumerate(repeated(value)):
        if not is_map_entry(entry):
            raise config_error(f"{path}[{i}]", "expected a map entry { key: ... value: ... }")
        key = entry["key"]
        if key in seen:
            raise config_error(path, f"key {key!r} appears twice")
        seen.add(key)
        items.append((key, entry.get("value"), f"{path}[{key!r}]"))
    return items


def string_map(value: Any, path: str) -> Mapping[str, str]:
    return MappingProxyType(
        {
            as_text(k, p): as_text(v if v is not None else "", p)
            for k, v, p in map_entries(value, path)
        }
    )
