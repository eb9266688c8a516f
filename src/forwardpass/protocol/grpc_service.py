"""Triton's gRPC service ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``.

:class:`InferenceServicer` answers every RPC of Triton's ``grpc_service.proto`` from an
:class:`~forwardpass.engine.Engine`; :class:`GrpcServer` runs it on grpcio's asyncio server, on
the same event loop as the HTTP server. Errors from the tree in ``forwardpass.errors`` become
gRPC statuses through :func:`~forwardpass.errors.grpc_code` and nowhere else.

``ModelInfer`` and ``ModelStreamInfer`` receive their requests as bytes and parse them here, so
a message that is not a ``ModelInferRequest`` is an INVALID_ARGUMENT answer (and, on a stream,
an ``error_message`` that leaves the stream open) rather than grpcio's generic failure.
Stream responses go out in the order the requests arrived, as Triton does for models that are
not decoupled; the requests themselves run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from forwardpass import __version__
from forwardpass.engine import Engine
from forwardpass.errors import ForwardpassError, InvalidArgument, Unsupported, grpc_code
from forwardpass.protocol.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    index_message,
    metadata_message,
    model_config_message,
    server_metadata_message,
    statistics_message,
)
from forwardpass.protocol.http import EXTENSIONS
from forwardpass.repository.load_parameters import read_load_parameters

__all__ = ["GrpcServer", "InferenceServicer"]

log = logging.getLogger("forwardpass.grpc")

SERVICE = "inference.GRPCInferenceService"

#: What the shared-memory and trace/log RPCs answer until those registries exist.
_NO_SHARED_MEMORY = (
    "{kind} shared memory is not supported by this server yet: send tensor data in "
    "raw_input_contents or typed contents"
)
_NO_SETTINGS = "{what} settings are not supported by this server yet"


def _parse_infer_request(data: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"the message is not a valid ModelInferRequest: {exc}") from None


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Every RPC of ``inference.GRPCInferenceService``, answered from one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -------------------------------------------------------------- health and metadata
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.engine.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        # Triton answers ready=false (not an error) for a model it does not know.
        return pb.ModelReadyResponse(ready=self.engine.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return server_metadata_message("forwardpass", __version__, EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return metadata_message(self.engine.metadata(request.name, request.version))

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return model_config_message(self.engine.model_config(request.name, request.version))

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        return statistics_message(self.engine.stats(request.name, request.version))

    # -------------------------------------------------------------- inference
    async def ModelInfer(self, data: bytes, context: Any) -> Any:
        request = decode_infer_request(_parse_infer_request(data))
        return encode_infer_response(await self.engine.infer(request))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for data in requests:
                    queue.put_nowait(loop.create_task(self._stream_one(data)))
            finally:
                queue.put_nowait(None)

        reader = loop.create_task(read())
        try:
            while (task := await queue.get()) is not None:
                yield await task
            await reader  # a broken read surfaces here, after every answer owed
        finally:
            reader.cancel()
            while not queue.empty():
                left = queue.get_nowait()
                if left is not None:
                    left.cancel()

    async def _stream_one(self, data: bytes) -> pb.ModelStreamInferResponse:
        request_id = ""
        try:
            message = _parse_infer_request(data)
            request_id = message.id
            request = decode_infer_request(message)
            response = encode_infer_response(await self.engine.infer(request))
            return pb.ModelStreamInferResponse(infer_response=response)
        except ForwardpassError as exc:
            message_text = exc.message
        except Exception as exc:  # a bug: answer it on the stream, keep the stream
            log.exception("unhandled error in ModelStreamInfer")
            message_text = f"internal error: {type(exc).__name__}: {exc}"
        # As Triton: the error, and the request's id so the client knows which one failed.
        return pb.ModelStreamInferResponse(
            error_message=message_text, infer_response=pb.ModelInferResponse(id=request_id)
        )

    # -------------------------------------------------------------- repository
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        return index_message(self.engine.index(ready_only=request.ready))

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        params: dict[str, Any] = {}
        for key, value in request.parameters.items():
            which = value.WhichOneof("parameter_choice")
            if which is None:
                raise InvalidArgument(f"load parameter {key!r} has no value")
            params[key] = getattr(value, which)
        config, files = read_load_parameters(params)
        await self.engine.load(request.model_name, config_override=config, files=files)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        if "unload_dependents" in request.parameters:
            log.info("unload_dependents ignored: forwardpass has no ensemble dependents to unload")
        await self.engine.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -------------------------------------------------------------- not in this build yet
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SHARED_MEMORY.format(kind="system"))

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SHARED_MEMORY.format(kind="system"))

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SHARED_MEMORY.format(kind="system"))

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SHARED_MEMORY.format(kind="CUDA"))

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SHARED_MEMORY.format(kind="CUDA"))

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SHARED_MEMORY.format(kind="CUDA"))

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SETTINGS.format(what="trace"))

    async def LogSettings(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_SETTINGS.format(what="log"))


# -- errors -------------------------------------------------------------------------------------


async def _abort(context: Any, exc: BaseException) -> NoReturn:
    if isinstance(exc, ForwardpassError):
        await context.abort(grpc.StatusCode[grpc_code(exc)], exc.message)
    log.exception("unhandled error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    raise AssertionError("unreachable")  # context.abort always raises


def _unary(method: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: Any) -> Any:
        try:
            return await method(request, context)
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):  # pragma: no cover - BaseException
                raise
            await _abort(context, exc)

    return call


def _identity(data: bytes) -> bytes:
    return data


def _service_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The method handlers grpcio's generated ``add_..._to_server`` would build, except that the
    two inference RPCs take bytes (parsed by the servicer) and every error maps through the one
    table."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        impl = getattr(servicer, method.name)
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        raw = method.name in ("ModelInfer", "ModelStreamInfer")
        deserialize = _identity if raw else request_type.FromString
        serialize = response_type.SerializeToString
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                impl, request_deserializer=deserialize, response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(impl), request_deserializer=deserialize, response_serializer=serialize
            )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


# -- grpc.health.v1 -------------------------------------------------------------------------------


def _health_messages() -> tuple[Any, Any]:
    """``HealthCheckRequest``/``HealthCheckResponse`` of ``grpc/health/v1/health.proto``.

    Built from a descriptor in a private pool: grpcio-health-checking would pull a protobuf
    major version the rest of the stack does not support, and the two messages are one field
    each. The private pool cannot clash with a ``grpc_health`` module loaded beside it.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="forwardpass/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=9, label=1)  # string
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=14,  # enum
        label=1,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
        ),
    )


_SERVING, _NOT_SERVING = 1, 2


def _health_handler(engine: Engine) -> grpc.GenericRpcHandler:
    request_type, response_type = _health_messages()

    async def check(request: Any, context: Any) -> Any:
        # The whole server ("") and the inference service; anything else is unknown (the
        # protocol's NOT_FOUND).
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return response_type(status=_SERVING if engine.ready else _NOT_SERVING)

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        },
    )


# -- the server -----------------------------------------------------------------------------------


class GrpcServer:
    """grpcio's asyncio server carrying :class:`InferenceServicer` and the health service."""

    def __init__(self, engine: Engine, host: str, port: int, max_message_bytes: int) -> None:
        self.host = host
        self.port = port
        self._server = grpc.aio.server(
            handlers=[_service_handler(InferenceServicer(engine)), _health_handler(engine)],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            bound = self._server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:  # grpcio's words for a port that cannot be bound
            raise OSError(f"cannot bind gRPC to {self.host}:{self.port}: {exc}") from None
        if bound == 0:
            raise OSError(f"cannot bind gRPC to {self.host}:{self.port}")
        self.port = bound
        await self._server.start()
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace_s``, then cancel."""
        await self._server.stop(grace_s)
