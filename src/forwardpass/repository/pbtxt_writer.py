"""Writing a :class:`ModelConfig` as Triton's ``config.pbtxt`` (protobuf text format).

The text is printed from :func:`~forwardpass.repository.config_json.config_to_dict`, the
config as Triton's JSON, so it says exactly what that says: reading it back with
:func:`~forwardpass.repository.pbtxt.parse_pbtxt` and
:func:`~forwardpass.repository.config_io.config_from_dict` gives the same config.

Like protobuf's own printer, fields at their default (``false``, ``0``, ``""``, empty lists
and maps) are left out, with two exceptions whose presence carries meaning here:
``max_batch_size`` (absent means "decide from the model file", 0 means "never batch") and
``dims`` (``dims: []`` is a scalar per batch item, absent means "read it from the model").
Empty messages (``all { }`` in a version policy) are kept: they are the choice of a oneof.
Enum fields print as bare identifiers (``TYPE_FP32``), maps as repeated
``{ key: ... value: ... }`` entries, strings with C escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forwardpass.model_config import ModelConfig
from forwardpass.repository.config_json import config_to_dict

__all__ = ["config_to_pbtxt"]

#: Fields whose values are enum identifiers, printed without quotes.
_ENUM_FIELDS = frozenset({"data_type", "format", "kind", "timeout_action", "priority"})
#: Map fields (``map<K, V>`` in model_config.proto); the value says which keys are integers.
_MAP_FIELDS = {
    "parameters": False,
    "priority_queue_policy": True,
    "inputs": False,
    "cc_model_filenames": False,
    "metric_tags": False,
    "input_map": False,
    "output_map": False,
}
#: Fields printed even at their default value (see the module docstring).
_ALWAYS = frozenset({"max_batch_size", "dims"})
_INDENT = "  "


def _is_default(value: Any) -> bool:
    if isinstance(value, Mapping):
        return False  # an empty message is kept: it may be the choice of a oneof
    if isinstance(value, list):
        return not value
    return value is None or value is False or value == "" or (type(value) is int and value == 0)


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)  # protobuf text format strings are UTF-8
    out.append('"')
    return "".join(out)


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if key in _ENUM_FIELDS and value.isidentifier():
            return value
        return _string(value)
    raise TypeError(f"cannot print {key}={value!r} as protobuf text")


def _message(fields: Mapping[str, Any], depth: int) -> list[str]:
    lines: list[str] = []
    pad = _INDENT * depth
    for key, value in fields.items():
        if key in _MAP_FIELDS and isinstance(value, Mapping):
            int_keys = _MAP_FIELDS[key]
            for map_key, map_value in value.items():
                printed_key = str(int(map_key)) if int_keys else _string(str(map_key))
                lines.append(f"{pad}{key} {{")
                lines.append(f"{pad}{_INDENT}key: {printed_key}")
                lines.extend(_field("value", map_value, depth + 1))
                lines.append(f"{pad}}}")
            continue
        if key not in _ALWAYS and _is_default(value):
            continue
        lines.extend(_field(key, value, depth))
    return lines


def _field(key: str, value: Any, depth: int) -> list[str]:
    pad = _INDENT * depth
    if isinstance(value, Mapping):
        body = _message(value, depth + 1)
        if not body:
            return [f"{pad}{key} {{ }}"]
        return [f"{pad}{key} {{", *body, f"{pad}}}"]
    if isinstance(value, list):
        if value and all(isinstance(item, Mapping) for item in value):
            lines: list[str] = []
            for item in value:
                lines.extend(_field(key, item, depth))
            return lines
        items = ", ".join(_scalar(key, item) for item in value)
        return [f"{pad}{key}: [{' ' + items + ' ' if items else ''}]"]
    return [f"{pad}{key}: {_scalar(key, value)}"]


def config_to_pbtxt(config: ModelConfig) -> str:
    """``config`` as the text of a Triton ``config.pbtxt`` (see the module docstring)."""
    return "\n".join(_message(config_to_dict(config), 0)) + "\n"
