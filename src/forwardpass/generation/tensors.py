"""A generation model seen through the inference API's tensors (gRPC ``ModelStreamInfer``).

Triton's generate-capable backends (the vLLM backend, TensorRT-LLM's ensembles) present a
text model as tensors rather than the decoder's raw inputs, and so does forwardpass: model
metadata lists the generate extension's view, which is also what a streamed inference request
carries::

    inputs   text_input           BYTES [1]   the prompt (UTF-8), required
             stream               BOOL  [1]   optional: false sends one response with the
                                              whole text (default true: one per token chunk)
             sampling_parameters  BYTES [1]   optional: JSON object of sampling parameters
    outputs  text_output          BYTES [-1]  that response's new text

Sampling parameters (``max_tokens``, ``temperature``, ...: ``sampling.SAMPLING_KEYS``) may
also come as request parameters, as tritonclient's ``parameters=`` sends them; the same key
in both places is refused. Every malformed piece is :class:`InvalidArgument` (400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument
from forwardpass.results import ModelMetadata, TensorMetadata
from forwardpass.types import InferRequest, InferResponse, Tensor

__all__ = [
    "GENERATION_INPUTS",
    "GENERATION_OUTPUTS",
    "TensorCall",
    "decode_tensor_call",
    "generation_metadata",
    "text_response",
]

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
FINISH_PARAMETER = "finish_reason"

GENERATION_INPUTS = (
    TensorMetadata(TEXT_INPUT, DataType.BYTES, (1,)),
    TensorMetadata("stream", DataType.BOOL, (1,)),
    TensorMetadata("sampling_parameters", DataType.BYTES, (1,)),
)
GENERATION_OUTPUTS = (TensorMetadata(TEXT_OUTPUT, DataType.BYTES, (-1,)),)

#: Request parameters the server (not sampling) reads; they never reach the sampler.
_SERVER_PARAMETERS = frozenset({"priority", "timeout"})


def generation_metadata(name: str, versions: tuple[str, ...], platform: str) -> ModelMetadata:
    """Model metadata of a generation model: the tensors above (as the vLLM backend's)."""
    return ModelMetadata(name, versions, platform, GENERATION_INPUTS, GENERATION_OUTPUTS)


@dataclass(frozen=True, slots=True)
class TensorCall:
    """What a tensor request asks a generation model for."""

    text: str
    parameters: dict[str, Any]
    stream: bool = True


def _scalar(tensor: Tensor, datatype: DataType) -> Any:
    if tensor.datatype is not datatype:
        raise InvalidArgument(
            f"input {tensor.name!r} must be {datatype.value}, got {tensor.datatype.value}"
        )
    if tensor.data.size != 1:
        raise InvalidArgument(
            f"input {tensor.name!r} must hold exactly one element, got shape "
            f"{list(tensor.data.shape)}"
        )
    return tensor.data.reshape(-1)[0]


def _utf8(tensor: Tensor) -> str:
    value = _scalar(tensor, DataType.BYTES)
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"input {tensor.name!r} is not UTF-8 text: {exc}") from None


def decode_tensor_call(request: InferRequest) -> TensorCall:
    """The prompt, sampling parameters and stream flag of ``request`` (400 when malformed)."""
    known = {m.name for m in GENERATION_INPUTS}
    by_name = {t.name: t for t in request.inputs}
    unknown = sorted(set(by_name) - known)
    if unknown:
        raise InvalidArgument(
            f"unexpected input(s) {', '.join(map(repr, unknown))} for a generation model "
            f"(its inputs: {', '.join(m.name for m in GENERATION_INPUTS)})"
        )
    if TEXT_INPUT not in by_name:
        raise InvalidArgument(f"a generation model needs the BYTES input {TEXT_INPUT!r}")
    text = _utf8(by_name[TEXT_INPUT])
    stream = True
    if "stream" in by_name:
        stream = bool(_scalar(by_name["stream"], DataType.BOOL))
    parameters = {k: v for k, v in request.parameters.items() if k not in _SERVER_PARAMETERS}
    if "sampling_parameters" in by_name:
        raw = _utf8(by_name["sampling_parameters"])
        try:
            nested = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"input 'sampling_parameters' is not JSON: {exc}") from None
        if not isinstance(nested, dict):
            raise InvalidArgument("input 'sampling_parameters' must be a JSON object")
        both = sorted(set(nested) & set(parameters))
        if both:
            raise InvalidArgument(
                f"sampling parameter(s) {', '.join(both)} given both as request parameters "
                "and in 'sampling_parameters'"
            )
        parameters.update(nested)
    if "stream" in parameters:
        raise InvalidArgument("'stream' is an input tensor (BOOL) here, not a sampling parameter")
    return TensorCall(text, parameters, stream)


def text_response(
    request: InferRequest,
    version: str,
    text: str,
    *,
    final: bool,
    finish: str | None = None,
) -> InferResponse:
    """One response carrying ``text`` as ``text_output`` (``[1]`` BYTES); the last one of a
    request is ``final`` and names its finish reason as a response parameter."""
    data = np.array([text.encode("utf-8")], dtype=object)
    parameters: dict[str, Any] = {} if finish is None else {FINISH_PARAMETER: finish}
    return InferResponse(
        request.model_name,
        version,
        [Tensor(TEXT_OUTPUT, DataType.BYTES, data)],
        id=request.id,
        parameters=parameters,
        final=final,
    )
