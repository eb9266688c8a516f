"""The HTTP codec of the Open Inference Protocol: request bodies to core types and back.

An inference body is either all JSON, or a JSON header followed by binary tensor blobs
(``Inference-Header-Content-Length`` gives the header's size), or, when that header is 0, the
raw bytes of a single-input model's only input. Every malformed body raises
:class:`~forwardpass.errors.InvalidArgument` with a message that names the offending field.

Shared memory (Triton's ``system_shared_memory``): an input whose parameters name a
``shared_memory_region`` (with ``shared_memory_byte_size`` and an optional
``shared_memory_offset``) and carry no data is read from that region; a requested output with
those parameters is written into it, and its response entry carries the parameters and no
data. The caller passes the request's :class:`~forwardpass.protocol.shared_memory.RegionLeases`
to both calls; without it (client shared memory not enabled) such tensors raise
:class:`~forwardpass.errors.PermissionDenied`.

Transport parameters stay where the encoder and engine look for them: ``binary_data_output``
in :attr:`InferRequest.parameters`, ``binary_data``, ``classification`` and the shared-memory
parameters in :attr:`RequestedOutput.parameters`. ``binary_data_size`` and an input's
shared-memory parameters are consumed here.
"""

from __future__ import annotations

import json
import math
from math import prod
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

import numpy as np
import orjson

from forwardpass.datatypes import DataType
from forwardpass.errors import InternalError, InvalidArgument, PermissionDenied
from forwardpass.model_config import ModelConfig
from forwardpass.protocol.binary import (
    array_from_binary,
    array_to_binary,
    check_output_dtype,
    tensor_from_raw_body,
)
from forwardpass.protocol.json_data import array_from_json, array_to_json
from forwardpass.types import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor

if TYPE_CHECKING:
    from forwardpass.protocol.shared_memory import RegionLeases

__all__ = ["decode_infer_request", "encode_error", "encode_infer_response"]

_DATATYPES: dict[str, DataType] = {t.value: t for t in DataType}
_DATATYPE_NAMES = ", ".join(_DATATYPES)
_PARAMETER_TYPES = (str, int, float, bool)
SHARED_MEMORY_PARAMETERS = (
    "shared_memory_region",
    "shared_memory_offset",
    "shared_memory_byte_size",
)
#: Triton's refusal when client shared memory is off (its flag has the same name).
SHM_DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm' to enable."
)
#: Offsets and sizes are 64-bit on every wire.
_MAX_SIZE = 2**63 - 1
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def decode_infer_request(
    body: bytes | bytearray | memoryview,
    *,
    model_name: str,
    model_version: str = "",
    header_length: int | None = None,
    config: ModelConfig | None = None,
    shared_memory: RegionLeases | None = None,
) -> InferRequest:
    """Decode an inference request body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: ``None`` when the
    body is all JSON, ``0`` for a raw binary request (which needs ``config``), otherwise the
    size of the JSON header that precedes the binary blobs. Tensors decoded from blobs are
    read-only views of ``body``; tensors read from shared memory are read-only views of the
    region, valid while ``shared_memory`` holds it.
    """
    if header_length is None:
        return _decode_json(body, None, model_name, model_version, shared_memory)
    if header_length == 0:
        tensor = tensor_from_raw_body(body, config)
        return InferRequest(
            model_name=model_name,
            model_version=model_version,
            inputs=[tensor],
            parameters={"binary_data_output": True},
        )
    if header_length < 0 or header_length > len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
        )
    return _decode_json(memoryview(body), header_length, model_name, model_version, shared_memory)


def encode_infer_response(
    response: InferResponse, request: InferRequest, shared_memory: RegionLeases | None = None
) -> tuple[bytes, int | None]:
    """Encode ``response`` as the client asked in ``request``.

    Returns the body and, when any output travels as a binary blob, the size of the JSON
    header to send as ``Inference-Header-Content-Length`` (``None`` for an all-JSON body).
    Outputs the request placed in shared memory are written there through ``shared_memory``
    (the leases the request was decoded with).
    """
    default_binary = request.parameters.get("binary_data_output") is True
    asked = {out.name: out.parameters for out in request.outputs} if request.outputs else {}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        name, datatype, array = tensor.name, tensor.datatype, tensor.data
        check_output_dtype(name, datatype, array)
        # As Triton's HTTP server: an output the request lists goes as its own binary_data
        # says (JSON without it), whatever binary_data_output says; only an output the
        # request does not list follows binary_data_output.
        wanted = asked.get(name)
        binary = wanted.get("binary_data") is True if wanted is not None else default_binary
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype.value,
            "shape": list(array.shape),
        }
        if wanted and "shared_memory_region" in wanted:
            # Written into the client's region; as Triton's HTTP server, the entry then has
            # neither data nor parameters (perf_analyzer reads binary_data_size from any
            # output that has parameters, and this one has no binary data).
            write_shared(tensor, wanted, shared_memory)
            outputs.append(entry)
            continue
        if binary:
            blob = array_to_binary(datatype, array)
            blobs.append(blob)
            entry["parameters"] = {**tensor.parameters, "binary_data_size": len(blob)}
        else:
            if tensor.parameters:
                entry["parameters"] = tensor.parameters
            entry["data"] = array_to_json(name, datatype, array)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    request_id = response.id or request.id
    if request_id:  # Triton leaves "id" out when the request had none
        document["id"] = request_id
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs
    header = _dumps(document)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


def encode_error(message: str) -> bytes:
    """The body of an error response: ``{"error": message}``."""
    return orjson.dumps({"error": message})


# -- decoding ---------------------------------------------------------------------------------


def _decode_json(
    body: bytes | bytearray | memoryview,
    header_length: int | None,
    model_name: str,
    model_version: str,
    shared_memory: RegionLeases | None,
) -> InferRequest:
    header = body if header_length is None else body[:header_length]
    document = _loads(header)
    if type(document) is not dict:
        raise InvalidArgument("the inference request must be a JSON object")

    request_id = document.get("id", "")
    if type(request_id) is not str:
        raise InvalidArgument("'id' must be a string")
    parameters = _parameters(document.get("parameters"), "request")
    binary_output = parameters.get("binary_data_output")
    if binary_output is not None and type(binary_output) is not bool:
        raise InvalidArgument("request parameter 'binary_data_output' must be a boolean")

    raw_inputs = document.get("inputs")
    if type(raw_inputs) is not list:
        # An empty array is valid (as in Triton): a model whose inputs are all optional runs.
        raise InvalidArgument(
            "Unable to parse 'inputs': 'inputs' must be an array of input tensors"
        )
    inputs: list[Tensor] = []
    names: set[str] = set()
    blobs: list[_Blob] = []  # inputs whose data follows the header, in body order
    for position, raw in enumerate(raw_inputs):
        tensor, blob = _input(raw, position, header_length is not None, shared_memory)
        if tensor.name in names:
            raise InvalidArgument(f"input {tensor.name!r} appears more than once")
        names.add(tensor.name)
        if blob is not None:
            blobs.append(blob)
        inputs.append(tensor)
    if header_length is not None:
        _read_blobs(body, header_length, blobs)

    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        id=request_id,
        outputs=_outputs(document.get("outputs"), shared_memory),
        parameters=parameters,
    )


def _loads(header: bytes | bytearray | memoryview) -> Any:
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        # Triton's parser accepts NaN, Infinity and -Infinity (and tritonclient sends them for
        # non-finite floats); orjson does not, so only then try the standard library, made to
        # read numbers as orjson does and to refuse what orjson refuses.
        try:
            document = json.loads(
                bytes(header).decode("utf-8"), parse_float=_finite_float, parse_int=_int
            )
        except (ValueError, RecursionError):  # RecursionError: nesting orjson also refused
            raise InvalidArgument(f"malformed JSON: {exc}") from None
        _no_lone_surrogates(document)
        return document


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is too large")
    return value


def _int(text: str) -> int | float:
    # orjson reads an integer beyond 64 bits as a float; a Python int that large would pass
    # validation here and then fail to encode in the response.
    value = int(text)
    return value if -(2**63) <= value < 2**64 else _finite_float(text)


def _no_lone_surrogates(document: Any) -> None:
    """Refuse ``"\\ud800"``, as orjson does: such a string is not text and cannot be echoed."""
    stack = [document]
    while stack:
        value = stack.pop()
        if type(value) is str:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(
                    f"malformed JSON: string {_short(value)} is not valid UTF-8 (it holds a lone "
                    "UTF-16 surrogate escape)"
                ) from None
        elif type(value) is list:
            stack.extend(value)
        elif type(value) is dict:
            stack.extend(value)
            stack.extend(value.values())


def _parameters(value: Any, where: str) -> Parameters:
    if value is None:
        return {}
    if type(value) is not dict:
        raise InvalidArgument(f"{where} 'parameters' must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, _PARAMETER_TYPES):
            raise InvalidArgument(f"{where} parameter {key!r} must be a string, number or boolean")
    return value


class _Blob(NamedTuple):
    """An input whose data is a blob after the JSON header."""

    tensor: Tensor
    size: int
    shape: tuple[int, ...]


def _input(
    raw: Any, position: int, has_blobs: bool, shared_memory: RegionLeases | None
) -> tuple[Tensor, _Blob | None]:
    """One ``$request_input``; a tensor whose data is a blob gets it from :func:`_read_blobs`."""
    if type(raw) is not dict:
        raise InvalidArgument(f"inputs[{position}] must be a JSON object")
    name = raw.get("name")
    if type(name) is not str:
        raise InvalidArgument(f"inputs[{position}]: 'name' must be a string")
    raw_datatype = raw.get("datatype")
    datatype = _DATATYPES.get(raw_datatype) if type(raw_datatype) is str else None
    if datatype is None:
        raise InvalidArgument(
            f"input {name!r}: unknown datatype {_short(raw.get('datatype'))}, expected one of "
            f"{_DATATYPE_NAMES}"
        )
    shape = raw.get("shape")
    if not _is_shape(shape):
        raise InvalidArgument(
            f"input {name!r}: 'shape' must be an array of non-negative integers, got "
            f"{_short(shape)}"
        )
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(
            f"input {name!r}: 'shape' has {len(shape)} dimensions, at most {MAX_DIMS} are allowed"
        )
    if prod(dim for dim in shape if dim) > MAX_ELEMENTS:
        # Checked even when a dimension is 0: NumPy refuses such a shape for any array.
        raise InvalidArgument(f"input {name!r}: 'shape' {_short(shape)} is too large")
    parameters = _parameters(raw.get("parameters"), f"input {name!r}")
    if parameters:
        place = shared_place(parameters, f"input {name!r}", shared_memory)
        if place is not None:
            if "data" in raw or "binary_data_size" in parameters:
                raise InvalidArgument(
                    f"input {name!r} has both data and shared memory parameters; send one"
                )
            assert shared_memory is not None  # shared_place refused otherwise
            for key in SHARED_MEMORY_PARAMETERS:
                parameters.pop(key, None)
            array = shared_memory.read(name, datatype, tuple(shape), *place)
            return Tensor(name, datatype, array, parameters), None
        size = parameters.pop("binary_data_size", None)
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidArgument(
                    f"input {name!r}: 'binary_data_size' must be a non-negative integer"
                )
            if not has_blobs:
                raise InvalidArgument(
                    f"input {name!r} declares binary_data_size but the request has no binary "
                    "data (Inference-Header-Content-Length is missing)"
                )
            if "data" in raw:
                raise InvalidArgument(
                    f"input {name!r} has both 'data' and binary_data_size; send one"
                )
            tensor = Tensor(name, datatype, _NO_DATA, parameters)
            return tensor, _Blob(tensor, size, tuple(shape))
    if "data" not in raw:
        raise InvalidArgument(f"input {name!r} has no 'data'")
    array = array_from_json(name, datatype, tuple(shape), raw["data"])
    return Tensor(name, datatype, array, parameters), None


_NO_DATA = np.empty(0, dtype=np.uint8)
#: NumPy's limit is 32 dimensions (1.x) or 64 (2.x); no model comes near either.
MAX_DIMS = 32
#: The most elements a shape may multiply to (NumPy sizes in bytes are signed 64-bit).
MAX_ELEMENTS = 2**60


def _is_shape(value: Any) -> TypeGuard[list[int]]:
    if type(value) is not list:
        return False
    for dim in value:  # a plain loop: the hot path, and faster than any() for short shapes
        if type(dim) is not int or dim < 0:
            return False
    return True


def _read_blobs(
    body: bytes | bytearray | memoryview, header_length: int, blobs: list[_Blob]
) -> None:
    # body is a memoryview here, so each blob is a view, not a copy.
    offset, end = header_length, len(body)
    for tensor, size, shape in blobs:
        if size > end - offset:
            raise InvalidArgument(
                f"input {tensor.name!r}: binary_data_size is {size} bytes but only "
                f"{end - offset} remain in the body"
            )
        blob = body[offset : offset + size]
        tensor.data = array_from_binary(tensor.name, tensor.datatype, shape, blob)
        offset += size
    if offset != end:
        after = f" after the data of input {blobs[-1].tensor.name!r}" if blobs else ""
        raise InvalidArgument(f"the body has {end - offset} unexpected trailing byte(s){after}")


def shared_place(
    parameters: Parameters, where: str, shared_memory: RegionLeases | None
) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when ``parameters`` place the tensor in shared memory."""
    if not any(key in parameters for key in SHARED_MEMORY_PARAMETERS):
        return None
    if shared_memory is None:
        raise PermissionDenied(f"{where}: {SHM_DISABLED}")
    region = parameters.get("shared_memory_region")
    size = parameters.get("shared_memory_byte_size")
    offset = parameters.get("shared_memory_offset", 0)
    if region is None or size is None:
        raise InvalidArgument(
            f"{where}: shared memory needs both 'shared_memory_region' and "
            "'shared_memory_byte_size'"
        )
    if type(region) is not str or not region:
        raise InvalidArgument(f"{where}: 'shared_memory_region' must be a non-empty string")
    for key, number in (("shared_memory_offset", offset), ("shared_memory_byte_size", size)):
        if type(number) is not int or not 0 <= number <= _MAX_SIZE:
            raise InvalidArgument(
                f"{where}: {key!r} must be an integer from 0 to {_MAX_SIZE}, got {_short(number)}"
            )
    return region, offset, size


def _outputs(value: Any, shared_memory: RegionLeases | None) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if type(value) is not list:
        raise InvalidArgument("'outputs' must be an array of requested outputs")
    outputs: list[RequestedOutput] = []
    names: set[str] = set()
    for position, raw in enumerate(value):
        if type(raw) is not dict:
            raise InvalidArgument(f"outputs[{position}] must be a JSON object")
        name = raw.get("name")
        if type(name) is not str:
            raise InvalidArgument(f"outputs[{position}]: 'name' must be a string")
        if name in names:
            raise InvalidArgument(f"output {name!r} is requested more than once")
        names.add(name)
        where = f"output {name!r}"
        parameters = _parameters(raw.get("parameters"), where)
        if parameters:
            place = shared_place(parameters, where, shared_memory)
            if place is not None:
                assert shared_memory is not None  # shared_place refused otherwise
                # Leased now, so the place exists (and stays mapped) when the result comes.
                shared_memory.reserve(name, *place)
            binary = parameters.get("binary_data")
            if binary is not None and type(binary) is not bool:
                raise InvalidArgument(f"{where}: parameter 'binary_data' must be a boolean")
            top = parameters.get("classification")
            if top is not None and (type(top) is not int or top < 0):
                raise InvalidArgument(
                    f"{where}: parameter 'classification' must be a non-negative integer"
                )
        outputs.append(RequestedOutput(name, parameters))
    return outputs


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- encoding ---------------------------------------------------------------------------------


def write_shared(
    tensor: Tensor, wanted: Parameters, shared_memory: RegionLeases | None
) -> Parameters:
    """Write output ``tensor`` where the request placed it; its entry's parameters."""
    if shared_memory is None:
        raise InternalError(
            f"output {tensor.name!r} asks for shared memory but no leases were passed"
        )
    region = wanted["shared_memory_region"]
    offset = wanted.get("shared_memory_offset", 0)
    size = wanted["shared_memory_byte_size"]
    shared_memory.write(tensor.name, tensor.datatype, tensor.data, region, offset, size)
    # The request's other output parameters (classification) stay; binary_data means nothing
    # for a tensor that travels outside the body.
    parameters: Parameters = {
        key: value
        for key, value in tensor.parameters.items()
        if key != "binary_data" and key not in SHARED_MEMORY_PARAMETERS
    }
    parameters["shared_memory_region"] = region
    parameters["shared_memory_byte_size"] = size
    if offset:
        parameters["shared_memory_offset"] = offset
    return parameters


def _dumps(document: dict[str, Any]) -> bytes:
    try:
        header = orjson.dumps(document, option=_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise InternalError(f"cannot encode the response as JSON: {exc}") from None
    if b"null" in header:
        # orjson writes NaN and infinities as null; Triton (rapidjson with
        # kWriteNanAndInfFlag) writes NaN, Infinity and -Infinity, which tritonclient reads
        # back exactly. Rare, so the slow standard library does it.
        header = json.dumps(_plain(document), separators=(",", ":")).encode("utf-8")
    return header


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value
