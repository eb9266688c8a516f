"""The ingress deployment: the Open Inference Protocol over HTTP on Ray Serve's proxy.

Ray Serve's HTTP proxy hands each request to this deployment as a Starlette request; the
ingress gives it to forwardpass's own :class:`~forwardpass.protocol.http.HttpApp`, which
parses it with forwardpass's codec (JSON and binary tensors) and asks a
:class:`~forwardpass.ray.router.RayRouter` where an engine would be. So the model replicas
receive decoded NumPy tensors, never the wire, and every route, status code and error
message is the one ``forwardpass serve`` gives.

With ``listen`` the ingress also serves HTTP itself, with forwardpass's own server on that
address, so requests skip Ray Serve's proxy (``forwardpass serve --ray`` does this; the
proxy stays available to ``serve run``); with ``grpc_listen`` it serves Triton's gRPC
protocol too, with forwardpass's own gRPC server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from forwardpass.config import ServerConfig
from forwardpass.protocol.http import HttpApp, HttpRequest
from forwardpass.protocol.server import HttpServer
from forwardpass.ray.calls import call
from forwardpass.ray.router import RayRouter

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from forwardpass.engine import Engine
    from forwardpass.protocol.grpc_service import GrpcServer

__all__ = ["Ingress"]


class Ingress:
    """The ingress deployment class (wrapped by ``serve.deployment`` in :mod:`application`)."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        handles: Mapping[str, Any],
        unavailable: Mapping[str, str],
        windows: Mapping[str, int],
        max_request_bytes: int,
        listen: str = "",
        grpc_listen: str = "",
    ) -> None:
        # Each model deployment describes itself once (its completed config and metadata):
        # the ingress answers metadata, config, health and the index without a hop.
        descriptions = {name: await call(h, "describe", name) for name, h in handles.items()}
        self.router = RayRouter(handles, descriptions, unavailable, windows)
        # The router has the engine methods the HTTP app calls (see its docstring).
        self.app = HttpApp(cast("Engine", self.router), None, max_request_bytes)
        self.server: HttpServer | None = None
        self.grpc: GrpcServer | None = None
        if listen:
            # forwardpass's own HTTP server, in this replica, beside Ray Serve's proxy: one
            # hop fewer per request (the proxy's), and the fast httptools parser.
            host, port = _split(listen)
            config = ServerConfig(
                host=host, http_port=port, grpc=False, max_request_bytes=max_request_bytes
            )
            self.server = HttpServer(self.app, config)
            await self.server.start()
        if grpc_listen:
            # Triton's gRPC protocol by forwardpass's own gRPC server (Ray Serve's gRPC proxy
            # would need a deployment method per RPC and cannot carry ModelStreamInfer).
            from forwardpass.protocol.grpc_service import GrpcServer

            host, port = _split(grpc_listen)
            self.grpc = GrpcServer(
                cast("Engine", self.router), ServerConfig(host=host, grpc_port=port)
            )
            await self.grpc.start()

    def http_address(self) -> str:
        """Where this replica's own HTTP server listens (``""`` when it has none)."""
        return f"{self.server.host}:{self.server.port}" if self.server is not None else ""

    def grpc_address(self) -> str:
        """Where this replica's own gRPC server listens (``""`` when it has none)."""
        return f"{self.grpc.host}:{self.grpc.port}" if self.grpc is not None else ""

    async def __call__(self, request: Request) -> Response:
        from starlette.responses import Response, StreamingResponse

        raw_path = request.scope.get("raw_path")
        # The raw path keeps %2F inside a segment; the HTTP app splits, then unquotes.
        path = raw_path.decode("latin-1") if raw_path else request.url.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = await self.app.handle(
            HttpRequest(request.method, path, await request.body(), headers)
        )
        if answer.stream is not None:
            return StreamingResponse(
                answer.stream,
                status_code=answer.status,
                media_type=answer.content_type,
                headers=dict(answer.headers),
            )
        return Response(
            answer.body,
            status_code=answer.status,
            media_type=answer.content_type,
            headers=dict(answer.headers),
        )


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
