"""Triton's generate extension over HTTP: ``POST v2/models/M[/versions/V]/generate`` and
``.../generate_stream`` (server-sent events).

Request (both URLs)::

    {"id": "...",                       optional
     "text_input": "the prompt",         required, a string
     "parameters": {"max_tokens": 32, "temperature": 0.7, ...},   optional
     "max_tokens": 32, ...}              sampling parameters may also be top-level fields

Response (``generate``: one JSON object; ``generate_stream``: one ``data:`` event per step,
``text_output`` holding that step's new text)::

    {"model_name": "M", "model_version": "1", "text_output": "...", "finish_reason": "stop"}

``finish_reason`` (``stop`` / ``length``) is set on the single response and on the last event
only; ``id`` is echoed when the request has one. An error before the first event is a plain
HTTP error; after it, ``data: {"error": "..."}`` ends the stream (as in Triton). The sampling
parameters are :data:`forwardpass.generation.sampling.SAMPLING_KEYS`; anything else is 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from forwardpass.errors import InvalidArgument

__all__ = ["GenerateCall", "decode_generate", "generate_document"]

_RESERVED = ("id", "text_input", "parameters")


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """One decoded generate request."""

    text: str
    parameters: dict[str, Any]
    id: str = ""


def decode_generate(body: bytes) -> GenerateCall:
    """Parse a generate request body (400 with the reason on anything malformed)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"the generate request is not UTF-8 text: {exc}") from None
    try:
        value = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON in generate request: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("the generate request must be a JSON object with 'text_input'")
    text = value.get("text_input")
    if not isinstance(text, str):
        raise InvalidArgument(
            "the generate request needs 'text_input', a string"
            + ("" if text is None else f" (got {type(text).__name__})")
        )
    request_id = value.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    nested = value.get("parameters", {})
    if not isinstance(nested, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    top = {k: v for k, v in value.items() if k not in _RESERVED}
    both = sorted(set(top) & set(nested))
    if both:
        raise InvalidArgument(
            f"parameter(s) {', '.join(both)} given both top-level and in 'parameters'"
        )
    return GenerateCall(text, {**top, **nested}, request_id)


def generate_document(
    name: str, version: str, text: str, finish: str | None, request_id: str = ""
) -> bytes:
    """One generate response (or stream event) as JSON."""
    document: dict[str, Any] = {"model_name": name, "model_version": version}
    if request_id:
        document["id"] = request_id
    document["text_output"] = text
    if finish is not None:
        document["finish_reason"] = finish
    return orjson.dumps(document)
