"""Reading a model config's string ``parameters`` the way Triton's backends read them.

Every backend takes booleans and integers from the same free-form map; a value that does not
parse is an :class:`InvalidModelConfig` naming the key, never a silent default. Keys a backend
does not know are left alone, as Triton's backends ignore them.
"""

from __future__ import annotations

from collections.abc import Mapping

from forwardpass.errors import InvalidModelConfig

__all__ = ["bool_param", "int_param"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def bool_param(params: Mapping[str, str], key: str) -> bool | None:
    """``params[key]`` as a boolean, or ``None`` when the key is absent."""
    if key not in params:
        return None
    value = params[key].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidModelConfig(f"parameter {key} must be true or false, got {params[key]!r}")


def int_param(params: Mapping[str, str], key: str, minimum: int = 0) -> int | None:
    """``params[key]`` as an integer >= ``minimum``, or ``None`` when the key is absent."""
    if key not in params:
        return None
    try:
        value = int(params[key])
    except ValueError:
        raise InvalidModelConfig(
            f"parameter {key} must be an integer, got {params[key]!r}"
        ) from None
    if value < minimum:
        raise InvalidModelConfig(f"parameter {key} must be >= {minimum}, got {params[key]!r}")
    return value
