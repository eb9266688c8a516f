"""The gRPC codec: Triton's protobuf messages to core types, and typed results to protobuf.

``ModelInferRequest`` → :class:`InferRequest`: each input's data comes either from
``raw_input_contents`` (one entry per input, in order, the same little-endian blobs as HTTP's
binary extension) or from its typed ``contents`` (``int_contents`` for INT8/16/32 and so on;
FP16 and BF16 have no typed field, so they travel raw only). Never both in one request.
:class:`InferResponse` → ``ModelInferResponse`` always answers in ``raw_output_contents``, as
Triton does. The engine's results (metadata, index, statistics) become their messages field by
field; only the model configuration goes through JSON (see :func:`model_config_message`).

Every malformed message raises :class:`~forwardpass.errors.InvalidArgument` with the HTTP
codec's wording where the fault is the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from math import prod
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb

from forwardpass.datatypes import DataType
from forwardpass.errors import InternalError, InvalidArgument
from forwardpass.model_config import ModelConfig
from forwardpass.protocol.binary import array_from_binary, array_to_binary, check_output_dtype
from forwardpass.protocol.codec import (
    MAX_DIMS,
    MAX_ELEMENTS,
    SHARED_MEMORY_PARAMETERS,
    shared_place,
    write_shared,
)
from forwardpass.protocol.shared_memory import RegionLeases
from forwardpass.repository import config_to_dict
from forwardpass.results import (
    BatchStatistics,
    Duration,
    IndexEntry,
    ModelMetadata,
    ModelStatistics,
    TensorMetadata,
)
from forwardpass.types import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor

__all__ = [
    "decode_infer_request",
    "encode_infer_response",
    "index_message",
    "metadata_message",
    "model_config_message",
    "parameters_from_message",
    "server_metadata_message",
    "statistics_message",
]

_DATATYPES: dict[str, DataType] = {t.value: t for t in DataType}
_DATATYPE_NAMES = ", ".join(_DATATYPES)

#: The typed ``contents`` field each datatype travels in (FP16/BF16 have none).
_CONTENTS_FIELD: dict[DataType, str] = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}
#: Types narrower than their contents field (int32/uint32), whose values need a range check.
_NARROW = (DataType.INT8, DataType.INT16, DataType.UINT8, DataType.UINT16)
_CONTENTS_FIELDS = tuple(dict.fromkeys(_CONTENTS_FIELD.values()))


# -- parameters -------------------------------------------------------------------------------


def parameters_from_message(params: Mapping[str, Any]) -> Parameters:
    """A protobuf ``map<string, InferParameter>`` as plain values (unset ones are refused)."""
    out: Parameters = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is None:
            raise InvalidArgument(f"parameter {key!r} has no value")
        out[key] = getattr(value, which)
    return out


def _set_parameter(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value >= 2**63:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


# -- ModelInferRequest → InferRequest -----------------------------------------------------------


def decode_infer_request(
    message: pb.ModelInferRequest, shared_memory: RegionLeases | None = None
) -> InferRequest:
    """The core request a ``ModelInferRequest`` carries.

    Inputs whose parameters name a system shared-memory region are read through
    ``shared_memory`` (the request's leases; ``None`` when the server does not allow client
    shared memory) and have no entry in ``raw_input_contents``, as tritonclient sends them.
    """
    inputs_pb = message.inputs
    raw = message.raw_input_contents
    if not inputs_pb:
        raise InvalidArgument("'inputs' must hold at least one input tensor")
    shared = [t for t in inputs_pb if any(k in t.parameters for k in SHARED_MEMORY_PARAMETERS)]
    if shared and shared_memory is None:
        # Refused for what it asks (client shared memory is off), before any count of its data.
        shared_place(
            parameters_from_message(shared[0].parameters), f"input {shared[0].name!r}", None
        )
    in_memory = len(inputs_pb) - len(shared)
    if raw and len(raw) != in_memory:
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{in_memory} input(s) outside shared memory; send one entry per such input, in order"
        )
    inputs: list[Tensor] = []
    names: set[str] = set()
    position = -1
    for tensor_pb in inputs_pb:
        name = tensor_pb.name
        if name in names:
            raise InvalidArgument(f"input {name!r} appears more than once")
        names.add(name)
        datatype = _DATATYPES.get(tensor_pb.datatype)
        if datatype is None:
            raise InvalidArgument(
                f"input {name!r}: unknown datatype {tensor_pb.datatype!r}, expected one of "
                f"{_DATATYPE_NAMES}"
            )
        shape = _shape(name, tensor_pb.shape)
        parameters = parameters_from_message(tensor_pb.parameters) if tensor_pb.parameters else {}
        has_contents = tensor_pb.HasField("contents")
        place = shared_place(parameters, f"input {name!r}", shared_memory) if parameters else None
        if place is not None:
            assert shared_memory is not None  # shared_place refused otherwise
            if has_contents:
                raise InvalidArgument(
                    f"input {name!r} has typed 'contents' and shared memory parameters; send one"
                )
            for key in SHARED_MEMORY_PARAMETERS:
                parameters.pop(key, None)
            array = shared_memory.read(name, datatype, shape, *place)
            inputs.append(Tensor(name, datatype, array, parameters))
            continue
        position += 1
        if raw:
            if has_contents:
                raise InvalidArgument(
                    f"input {name!r} has typed 'contents' but the request also carries "
                    "raw_input_contents; send one or the other"
                )
            array = _from_raw(name, datatype, shape, raw[position], position)
        elif has_contents:
            array = _from_contents(name, datatype, shape, tensor_pb.contents)
        else:
            raise InvalidArgument(
                f"input {name!r} has no data: send its typed 'contents' or raw_input_contents"
            )
        inputs.append(Tensor(name, datatype, array, parameters))
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        inputs=inputs,
        id=message.id,
        outputs=_outputs(message.outputs, shared_memory) if message.outputs else None,
        parameters=parameters_from_message(message.parameters) if message.parameters else {},
    )


def _shape(name: str, dims: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(dims)
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(
                f"input {name!r}: 'shape' must hold non-negative integers, got {list(shape)}"
            )
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(
            f"input {name!r}: 'shape' has {len(shape)} dimensions, at most {MAX_DIMS} are allowed"
        )
    if prod(dim for dim in shape if dim) > MAX_ELEMENTS:
        raise InvalidArgument(f"input {name!r}: 'shape' {list(shape)} is too large")
    return shape


def _from_raw(
    name: str, datatype: DataType, shape: tuple[int, ...], blob: bytes, position: int
) -> np.ndarray:
    if datatype is not DataType.BYTES:
        expected = prod(shape) * datatype.itemsize
        if len(blob) != expected:
            raise InvalidArgument(
                f"input {name!r}: raw_input_contents[{position}] has {len(blob)} bytes but "
                f"shape {list(shape)} of {datatype.value} needs {expected}"
            )
    return array_from_binary(name, datatype, shape, blob)


def _from_contents(
    name: str, datatype: DataType, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(
            f"input {name!r}: {datatype.value} has no typed 'contents' field; send its data "
            "in raw_input_contents"
        )
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidArgument(
                f"input {name!r} is {datatype.value} but carries {other}; "
                f"{datatype.value} data goes in {field}"
            )
    values = getattr(contents, field)
    count = prod(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: shape {list(shape)} needs {count} element(s) but '{field}' "
            f"holds {len(values)}"
        )
    if datatype is DataType.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    if datatype in _NARROW and count:
        info = np.iinfo(datatype.numpy)
        wide = np.fromiter(values, dtype=np.int64, count=count)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidArgument(
                f"input {name!r}: value {bad} is out of range for {datatype.value} "
                f"[{info.min}, {info.max}]"
            )
        return wide.astype(datatype.numpy).reshape(shape)
    return np.fromiter(values, dtype=datatype.numpy, count=count).reshape(shape)


def _outputs(
    outputs_pb: Iterable[Any], shared_memory: RegionLeases | None
) -> list[RequestedOutput]:
    outputs: list[RequestedOutput] = []
    names: set[str] = set()
    for output_pb in outputs_pb:
        name = output_pb.name
        if name in names:
            raise InvalidArgument(f"output {name!r} is requested more than once")
        names.add(name)
        where = f"output {name!r}"
        parameters = parameters_from_message(output_pb.parameters) if output_pb.parameters else {}
        if parameters:
            place = shared_place(parameters, where, shared_memory)
            if place is not None:
                assert shared_memory is not None  # shared_place refused otherwise
                shared_memory.reserve(name, *place)  # leased now, mapped when the result comes
            # binary_data is HTTP's choice of encoding; gRPC always answers raw.
            parameters.pop("binary_data", None)
            top = parameters.get("classification")
            if top is not None and (type(top) is not int or top < 0):
                raise InvalidArgument(
                    f"{where}: parameter 'classification' must be a non-negative integer"
                )
        outputs.append(RequestedOutput(name, parameters))
    return outputs


# -- InferResponse → ModelInferResponse ---------------------------------------------------------


def encode_infer_response(
    response: InferResponse,
    request: InferRequest | None = None,
    shared_memory: RegionLeases | None = None,
) -> pb.ModelInferResponse:
    """The response message; every output's data in ``raw_output_contents``, in order.

    An output the request placed in shared memory is written there; its entry carries the
    region's parameters and an empty ``raw_output_contents`` slot (the indices stay aligned).
    """
    asked = (
        {out.name: out.parameters for out in request.outputs}
        if request is not None and request.outputs
        else {}
    )
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    outputs = message.outputs
    blobs: list[bytes] = []
    for tensor in response.outputs:
        datatype, array = tensor.datatype, tensor.data
        check_output_dtype(tensor.name, datatype, array)
        output = outputs.add(name=tensor.name, datatype=datatype.value, shape=array.shape)
        wanted = asked.get(tensor.name)
        if wanted and "shared_memory_region" in wanted:
            placed = write_shared(tensor, wanted, shared_memory)
            for key, value in placed.items():
                _set_parameter(output.parameters[key], value)
            blobs.append(b"")
            continue
        for key, value in tensor.parameters.items():
            _set_parameter(output.parameters[key], value)
        blobs.append(array_to_binary(datatype, array))
    message.raw_output_contents.extend(blobs)
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    return message


# -- typed results → messages -------------------------------------------------------------------


def _tensor(t: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=t.name, datatype=t.datatype.value, shape=t.shape
    )


def metadata_message(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=[_tensor(t) for t in meta.inputs],
        outputs=[_tensor(t) for t in meta.outputs],
    )


def server_metadata_message(
    name: str, version: str, extensions: Iterable[str]
) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))


def index_message(entries: Iterable[IndexEntry]) -> pb.RepositoryIndexResponse:
    # optimized_from/optimization have no field in Triton's ModelIndex; HTTP shows them.
    Index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(
        models=[
            Index(name=e.name)
            if e.state is None
            else Index(name=e.name, version=e.version, state=e.state.value, reason=e.reason)
            for e in entries
        ]
    )


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _batch(b: BatchStatistics) -> pb.InferBatchStatistics:
    return pb.InferBatchStatistics(
        batch_size=b.batch_size,
        compute_input=_duration(b.compute_input),
        compute_infer=_duration(b.compute_infer),
        compute_output=_duration(b.compute_output),
    )


def _model_stats(s: ModelStatistics) -> pb.ModelStatistics:
    i = s.inference_stats
    return pb.ModelStatistics(
        name=s.name,
        version=s.version,
        last_inference=s.last_inference,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(i.success),
            fail=_duration(i.fail),
            queue=_duration(i.queue),
            compute_input=_duration(i.compute_input),
            compute_infer=_duration(i.compute_infer),
            compute_output=_duration(i.compute_output),
            cache_hit=_duration(i.cache_hit),
            cache_miss=_duration(i.cache_miss),
        ),
        batch_stats=[_batch(b) for b in s.batch_stats],
    )


def statistics_message(stats: Sequence[ModelStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(model_stats=[_model_stats(s) for s in stats])


def model_config_message(config: ModelConfig) -> pb.ModelConfigResponse:
    """The model configuration as ``model_config.proto``'s message.

    The one result that goes through JSON: the configuration's canonical rendering is Triton's
    JSON mapping of model_config.proto (``config_to_dict``, what HTTP answers), and protobuf's
    own JSON reader turns that mapping into the message exactly, field for field; a second,
    hand-written rendering of ~60 nested fields could only drift from the first.
    """
    try:
        message = json_format.ParseDict(config_to_dict(config), model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        raise InternalError(f"cannot render the configuration of {config.name!r}: {exc}") from exc
    return pb.ModelConfigResponse(config=message)
