"""Triton's gRPC service ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``.

:class:`InferenceServicer` answers every RPC of Triton's ``grpc_service.proto`` from an
:class:`~forwardpass.engine.Engine`; :class:`GrpcServer` runs it on grpcio's asyncio server, on
the same event loop as the HTTP server. Errors from the tree in ``forwardpass.errors`` become
gRPC statuses through :func:`~forwardpass.errors.grpc_code` and nowhere else.

``ModelInfer`` and ``ModelStreamInfer`` receive their requests as bytes and parse them here, so
a message that is not a ``ModelInferRequest`` is an INVALID_ARGUMENT answer (and, on a stream,
an ``error_message`` that leaves the stream open) rather than grpcio's generic failure.
Stream requests run concurrently; the answers of models that are not decoupled go out in the
order their requests arrived and a decoupled model's as it sends them, as Triton does.
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
from forwardpass.access import AccessPolicy
from forwardpass.config import ServerConfig
from forwardpass.engine import Engine
from forwardpass.errors import (
    ForwardpassError,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    Unsupported,
    grpc_code,
)
from forwardpass.monitor.logsettings import LogControl, parse_log_update
from forwardpass.monitor.trace import Trace, parse_trace_update
from forwardpass.protocol.codec import SHM_DISABLED
from forwardpass.protocol.documents import log_settings_document, trace_settings_document
from forwardpass.protocol.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    index_message,
    metadata_message,
    model_config_message,
    server_metadata_message,
    statistics_message,
)
from forwardpass.protocol.grpc_generate import stream_generation
from forwardpass.protocol.http import extensions
from forwardpass.protocol.shared_memory import SharedMemoryRegistry
from forwardpass.repository.load_parameters import read_load_parameters
from forwardpass.types import InferResponse

__all__ = ["GrpcServer", "InferenceServicer"]

log = logging.getLogger("forwardpass.grpc")

SERVICE = "inference.GRPCInferenceService"

_NO_CUDA_SHARED_MEMORY = (
    "CUDA shared memory is not supported on this server (it has no CUDA device support); "
    "use system shared memory"
)

#: Each RPC's API group (Triton's names), for the restricted-protocol access policy.
_GROUPS = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}


#: The response parameter that marks a streamed request's last response (Triton's name).
_FINAL = "triton_final_response"
#: The request parameter asking for an empty final response (tritonclient's
#: ``enable_empty_final_response=True``); the server's to read, never the model's.
_EMPTY_FINAL = "triton_enable_empty_final_response"


def _take_bool(message: pb.ModelInferRequest, key: str) -> bool:
    """Remove the request parameter ``key`` and return it (a bool; InvalidArgument if not)."""
    if key not in message.parameters:
        return False
    value = message.parameters[key]
    which = value.WhichOneof("parameter_choice")
    if which != "bool_param":
        raise InvalidArgument(f"parameter {key!r} must be a bool, got {which or 'no value'}")
    flag = value.bool_param
    del message.parameters[key]
    return flag


async def _in_turn(after: asyncio.Future[None] | None) -> None:
    if after is not None:
        await asyncio.shield(after)


def _pass_on(after: asyncio.Future[None] | None, done: asyncio.Future[None]) -> None:
    """Resolve ``done`` when ``after`` resolves (now, if there is nothing before it)."""

    def resolve(_: object = None) -> None:
        if not done.done():
            done.set_result(None)

    if after is None or after.done():
        resolve()
    else:
        after.add_done_callback(resolve)


def _parse_infer_request(data: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"the message is not a valid ModelInferRequest: {exc}") from None


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Every RPC of ``inference.GRPCInferenceService``, answered from one engine."""

    def __init__(
        self,
        engine: Engine,
        shared_memory: SharedMemoryRegistry | None = None,
        logs: LogControl | None = None,
    ) -> None:
        self.engine = engine
        self.shared_memory = shared_memory
        self.logs = logs
        self.extensions = extensions(shared_memory is not None)

    # -------------------------------------------------------------- health and metadata
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.engine.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        # Triton answers ready=false (not an error) for a model it does not know.
        return pb.ModelReadyResponse(ready=self.engine.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return server_metadata_message("forwardpass", __version__, self.extensions)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return metadata_message(self.engine.metadata(request.name, request.version))

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return model_config_message(self.engine.model_config(request.name, request.version))

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        return statistics_message(await self.engine.statistics(request.name, request.version))

    # -------------------------------------------------------------- inference
    async def ModelInfer(self, data: bytes, context: Any) -> Any:
        message = _parse_infer_request(data)
        if self.engine.tracer.active:
            return await self._traced_infer(message, context)
        return await self._infer(message, None)

    async def _infer(self, message: pb.ModelInferRequest, trace: Trace | None) -> Any:
        if self.shared_memory is None:
            request = decode_infer_request(message)
            return encode_infer_response(await self.engine.infer(request, trace, sampled=True))
        with self.shared_memory.leases() as leases:
            request = decode_infer_request(message, leases)
            response = await self.engine.infer(request, trace, sampled=True)
            return encode_infer_response(response, request, leases)

    async def _traced_infer(self, message: pb.ModelInferRequest, context: Any) -> Any:
        """ModelInfer while some scope traces: sample (with the W3C ``traceparent`` of the
        call's metadata), stamp the gRPC side as Triton names it, finish the trace."""
        trace = self.engine.tracer.sample(message.model_name, _metadata(context))
        if trace is None:
            return await self._infer(message, None)
        trace.stamp("GRPC_WAIT_READ_END")
        try:
            answer = await self._infer(message, trace)
            trace.stamp("GRPC_SEND_START")
            return answer
        except ForwardpassError as exc:
            trace.error = exc.message
            raise
        finally:
            trace.finish()

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently; as Triton does, the answers of models that are not
        decoupled go out in the order their requests arrived, and a decoupled model's go out
        as it sends them (between those, in no fixed order)."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def read() -> None:
            turn: asyncio.Future[None] | None = None  # the previous request's place in order
            try:
                async for data in requests:
                    mine: asyncio.Future[None] = loop.create_future()
                    task = loop.create_task(self._stream_one(data, out.put_nowait, turn, mine))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    turn = mine
            finally:
                if tasks:
                    await asyncio.wait(set(tasks))
                out.put_nowait(None)

        reader = loop.create_task(read())
        try:
            while (answer := await out.get()) is not None:
                yield answer
            await reader  # a broken read surfaces here, after every answer owed
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(
        self,
        data: bytes,
        send: Callable[[pb.ModelStreamInferResponse], None],
        after: asyncio.Future[None] | None,
        done: asyncio.Future[None],
    ) -> None:
        """Answer one streamed request through ``send``: one response, or a decoupled model's
        0..n, or the error.

        ``after`` resolves once the requests before this one that owe an ordered answer have
        sent it; ``done`` resolves once this one has (a decoupled request passes ``after`` on).

        Every response carries ``triton_final_response``, true on a request's last one, as
        Triton marks them. When a decoupled model ends a request without a response (its final
        flag sent on its own) nothing more is sent, unless the client asked with
        ``triton_enable_empty_final_response``: then an empty response with only the id, the
        model and ``triton_final_response: true`` closes it.
        """
        request_id = ""
        decoupled = False
        model_name = model_version = ""
        leases = self.shared_memory.leases() if self.shared_memory is not None else None
        try:
            try:
                message = _parse_infer_request(data)
                request_id = message.id
                model_name, model_version = message.model_name, message.model_version
                empty_final = _take_bool(message, _EMPTY_FINAL)
                request = decode_infer_request(message, leases)
                handle, loaded = self.engine.version(request.model_name, request.model_version)
                decoupled = handle.config.decoupled or loaded.generator is not None
                if loaded.generator is not None:  # one response per token chunk
                    _pass_on(after, done)

                    def put(item: InferResponse) -> None:
                        response = encode_infer_response(item, request, leases)
                        response.parameters[_FINAL].bool_param = item.final
                        send(pb.ModelStreamInferResponse(infer_response=response))

                    await stream_generation(self.engine, request, str(loaded.version), put)
                    return
                if not decoupled:
                    response = encode_infer_response(
                        await self.engine.infer(request), request, leases
                    )
                    response.parameters[_FINAL].bool_param = True
                    await _in_turn(after)
                    send(pb.ModelStreamInferResponse(infer_response=response))
                    return
                _pass_on(after, done)
                flagged = False  # the model's final flag rode on a response
                async for item in self.engine.infer_stream(request):
                    response = encode_infer_response(item, request, leases)
                    response.parameters[_FINAL].bool_param = flagged = item.final
                    send(pb.ModelStreamInferResponse(infer_response=response))
                if not flagged and empty_final:
                    final = pb.ModelInferResponse(
                        id=request_id, model_name=model_name, model_version=model_version
                    )
                    final.parameters[_FINAL].bool_param = True
                    send(pb.ModelStreamInferResponse(infer_response=final))
                return
            except ForwardpassError as exc:
                message_text = exc.message
            except Exception as exc:  # a bug: answer it on the stream, keep the stream
                log.exception("unhandled error in ModelStreamInfer")
                message_text = f"internal error: {type(exc).__name__}: {exc}"
            # As Triton: the error, and the request's id so the client knows which one failed;
            # a decoupled request's error also names the model and ends the request.
            error = pb.ModelStreamInferResponse(
                error_message=message_text, infer_response=pb.ModelInferResponse(id=request_id)
            )
            if decoupled:
                error.infer_response.model_name = model_name
                error.infer_response.model_version = model_version
                error.infer_response.parameters[_FINAL].bool_param = True
            else:
                await _in_turn(after)
            send(error)
        finally:
            if leases is not None:
                leases.close()
            if not done.done():
                _pass_on(after, done)

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

    # -------------------------------------------------------------- shared memory
    def _registry(self) -> SharedMemoryRegistry:
        if self.shared_memory is None:
            raise PermissionDenied(SHM_DISABLED)
        return self.shared_memory

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        answer = pb.SystemSharedMemoryStatusResponse()
        for region in self._registry().status(request.name):
            answer.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name,
                    key=region.key,
                    offset=region.offset,
                    byte_size=region.byte_size,
                )
            )
        return answer

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._registry().register_shared(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await self._registry().unregister_shared(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_CUDA_SHARED_MEMORY)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_CUDA_SHARED_MEMORY)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        raise Unsupported(_NO_CUDA_SHARED_MEMORY)

    # -------------------------------------------------------------- trace and log settings
    async def TraceSetting(self, request: Any, context: Any) -> Any:
        model = request.model_name
        if model and not self.engine.is_ready(model):
            raise InvalidArgument(f"Request for unknown model : {model}")
        tracer = self.engine.tracer
        if request.settings:
            # A setting with no values clears it (Triton's gRPC spelling of HTTP's null).
            values = {key: list(value.value) for key, value in request.settings.items()}
            for key, listed in values.items():
                if key != "trace_level" and len(listed) == 1:
                    values[key] = listed[0]
            update = parse_trace_update(values)
            settings = tracer.update(model, update)
            await self.engine.share("trace", model, update)
        else:
            settings = tracer.settings(model)
        answer = pb.TraceSettingResponse()
        for key, value in trace_settings_document(settings).items():
            answer.settings[key].value.extend(value if isinstance(value, list) else [value])
        return answer

    async def LogSettings(self, request: Any, context: Any) -> Any:
        if self.logs is None:
            raise Unavailable("the server does not support dynamic logging")
        if request.settings:
            values = {}
            for key, value in request.settings.items():
                which = value.WhichOneof("parameter_choice")
                values[key] = getattr(value, which) if which else None
            log_update = parse_log_update(values)
            settings = self.logs.update(log_update)
            await self.engine.share("log", log_update)
        else:
            settings = self.logs.current
        answer = pb.LogSettingsResponse()
        for key, value in log_settings_document(settings).items():
            target = answer.settings[key]
            if isinstance(value, bool):
                target.bool_param = value
            elif isinstance(value, int):
                target.uint32_param = value
            else:
                target.string_param = value
        return answer


# -- errors -------------------------------------------------------------------------------------


async def _abort(context: Any, exc: BaseException) -> NoReturn:
    if isinstance(exc, ForwardpassError):
        await context.abort(grpc.StatusCode[grpc_code(exc)], exc.message)
    log.exception("unhandled error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    raise AssertionError("unreachable")  # context.abort always raises


def _metadata(context: Any) -> dict[str, str]:
    """The call's metadata as lower-case header names (how the access policy reads them)."""
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


def _unary(
    method: Callable[[Any, Any], Awaitable[Any]], group: str, access: AccessPolicy | None
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: Any) -> Any:
        try:
            if access is not None:
                access.check(group, _metadata(context))
            return await method(request, context)
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):  # pragma: no cover - BaseException
                raise
            await _abort(context, exc)

    return call


def _streaming(
    method: Callable[[Any, Any], AsyncIterator[Any]], group: str, access: AccessPolicy | None
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    if access is None:
        return method

    async def call(requests: Any, context: Any) -> AsyncIterator[Any]:
        try:
            access.check(group, _metadata(context))
        except ForwardpassError as exc:
            await _abort(context, exc)
        async for answer in method(requests, context):
            yield answer

    return call


def _identity(data: bytes) -> bytes:
    return data


def _service_handler(
    servicer: InferenceServicer, access: AccessPolicy | None = None
) -> grpc.GenericRpcHandler:
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
        group = _GROUPS[method.name]
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _streaming(impl, group, access),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(impl, group, access),
                request_deserializer=deserialize,
                response_serializer=serialize,
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

    def __init__(
        self,
        engine: Engine,
        config: ServerConfig,
        shared_memory: SharedMemoryRegistry | None = None,
        logs: LogControl | None = None,
    ) -> None:
        self.host = config.host
        self.port = config.grpc_port
        self._credentials = _credentials(config)
        access = AccessPolicy.from_config(config, "grpc")
        limit = config.grpc_message_limit
        servicer = InferenceServicer(engine, shared_memory, logs)
        self._server = grpc.aio.server(
            handlers=[
                _service_handler(servicer, access if access.active else None),
                _health_handler(engine),
            ],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Several worker processes share the port (serve --workers N).
                ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
            ],
        )

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            address = f"{host}:{self.port}"
            if self._credentials is None:
                bound = self._server.add_insecure_port(address)
            else:
                bound = self._server.add_secure_port(address, self._credentials)
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


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS for gRPC from the server's certificate files (the same ones HTTPS uses); with a CA
    bundle, clients must present a certificate it signed (mutual TLS)."""
    if config.tls_cert is None:
        return None
    if config.tls_key is None:
        raise InvalidArgument("--tls-cert needs --tls-key")
    try:
        chain = config.tls_cert.read_bytes()
        key = config.tls_key.read_bytes()
        ca = config.tls_ca.read_bytes() if config.tls_ca is not None else None
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read a TLS file for gRPC: {exc.strerror}: {exc.filename}"
        ) from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )
