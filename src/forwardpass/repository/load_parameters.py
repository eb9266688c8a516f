"""The parameters of a repository load request, read once for every protocol.

Triton's load call carries ``config`` (the model configuration as JSON text, overriding the
repository's) and ``file:<path>`` entries (a model file's content, which only make sense with a
``config``). Each protocol delivers the file contents its own way (base64 text in HTTP JSON,
``bytes_param`` in gRPC) and hands them over here as bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from forwardpass.errors import InvalidArgument

__all__ = ["read_load_parameters"]


def read_load_parameters(
    params: Mapping[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    """``(config override or None, {relative path: content})`` from Triton's load parameters."""
    config = None
    files: dict[str, bytes] = {}
    for key, value in params.items():
        if key == "config":
            if not isinstance(value, str):
                raise InvalidArgument("load parameter 'config' must be a JSON string")
            try:
                config = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InvalidArgument(f"load parameter 'config' is not valid JSON: {exc}") from None
            if not isinstance(config, dict):
                raise InvalidArgument("load parameter 'config' must be a JSON object")
        elif key.startswith("file:"):
            if not isinstance(value, bytes):
                raise InvalidArgument(f"load parameter {key!r} must carry the file's bytes")
            files[key[5:]] = value
        else:
            raise InvalidArgument(
                f"unknown load parameter {key!r} (expected config or file:<path>)"
            )
    if files and config is None:
        raise InvalidArgument(
            "load parameters with files must also carry 'config' (as Triton requires)"
        )
    return config, files
