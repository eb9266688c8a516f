"""Core request/response types. They know nothing of HTTP or gRPC.

A protocol adapter decodes the wire into an :class:`InferRequest` whose tensors are NumPy
arrays, the engine answers with an :class:`InferResponse`, and the adapter encodes it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType

__all__ = ["InferRequest", "InferResponse", "Parameters", "RequestedOutput", "Tensor"]

#: Protocol parameters: string keys to str, int, float or bool values.
Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    """A named tensor. ``data`` has the tensor's full shape (batch dimension included).

    BF16 tensors hold uint16 bit patterns; BYTES tensors hold an object array of ``bytes``.
    """

    name: str
    datatype: DataType
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with its per-output parameters.

    Parameters the engine acts on: ``classification`` (top-N as ``"value:index[:label]"``).
    Transport parameters (``binary_data``) pass through untouched for the adapter.
    """

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """One inference request.

    ``model_version`` is ``""`` when the client did not name one (the version policy picks).
    ``outputs`` is ``None`` when the client wants every output. Request parameters the engine
    acts on: ``priority`` (int, 1 is highest, 0 the model's default) and ``timeout``
    (microseconds in the queue).
    """

    model_name: str
    inputs: list[Tensor]
    model_version: str = ""
    id: str = ""
    outputs: list[RequestedOutput] | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    """The answer to one :class:`InferRequest`, outputs in the order the client asked for."""

    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    #: A streamed response the model marked as its request's last as it sent it (a decoupled
    #: model's final flag riding on a response). A stream may also end with no response after
    #: the last one; wires that tell the client which response was last read this.
    final: bool = False
