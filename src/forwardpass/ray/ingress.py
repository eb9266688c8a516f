"""The ingress deployment: the Open Inference Protocol over HTTP on Ray Serve's proxy.

Ray Serve's HTTP proxy hands each request to this deployment as a Starlette request; the
ingress gives it to forwardpass's own :class:`~forwardpass.protocol.http.HttpApp`, which
parses it with forwardpass's codec (JSON and binary tensors) and asks a
:class:`~forwardpass.ray.router.RayRouter` where an engine would be. So the model replicas
receive decoded NumPy tensors, never the wire, and every route, status code and error
message is the one ``forwardpass serve`` gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from forwardpass.protocol.http import HttpApp, HttpRequest
from forwardpass.ray.calls import call
from forwardpass.ray.router import RayRouter

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from forwardpass.engine import Engine

__all__ = ["Ingress"]


class Ingress:
    """The deployment class of the ingress (wrapped by ``serve.deployment`` in :mod:`app`)."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        handles: Mapping[str, Any],
        unavailable: Mapping[str, str],
        max_request_bytes: int,
    ) -> None:
        # Each model deployment describes itself once (its completed config and metadata):
        # the ingress answers metadata, config, health and the index without a hop.
        descriptions = {name: await call(h, "describe", name) for name, h in handles.items()}
        self.router = RayRouter(handles, descriptions, unavailable)
        # The router has the engine methods the HTTP app calls (see its docstring).
        self.app = HttpApp(cast("Engine", self.router), None, max_request_bytes)

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
