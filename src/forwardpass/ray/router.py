"""The ingress side of forwardpass on Ray: what :class:`~forwardpass.protocol.http.HttpApp`
asks an engine, answered from the model deployments.

:class:`RayRouter` stands where the HTTP app expects an :class:`~forwardpass.engine.Engine`:
inference goes to the model's deployment through its handle (the request already decoded
into NumPy tensors by forwardpass's codec, here in the ingress; requests that arrive
together travel in one call, see :class:`~forwardpass.ray.calls.Coalescer`); health,
metadata, config and the index are answered from the descriptions each deployment gave when
the ingress started (models on Ray are fixed for the life of the application: redeploy to
change them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from forwardpass.errors import NotFound, Unavailable, Unsupported
from forwardpass.model_config import ModelConfig
from forwardpass.monitor.trace import Trace, Tracer
from forwardpass.ray.calls import Coalescer
from forwardpass.ray.replica import ModelDescription
from forwardpass.results import IndexEntry, ModelMetadata, ModelState, ModelStatistics
from forwardpass.types import InferRequest, InferResponse

__all__ = ["RayRouter"]

_NO_CONTROL = (
    "model load / unload is not available on Ray: the application's models are fixed when "
    "it is deployed; change the repository and redeploy (forwardpass serve --ray, serve run)"
)


class RayRouter:
    """Engine-shaped front of the model deployments (see the module docstring).

    ``unavailable`` names the repository's models that could not be read at deployment,
    with the reason: they are in the index as UNAVAILABLE, and requests to them get 503.
    ``windows`` is how many calls each model's :class:`Coalescer` keeps in flight.
    """

    def __init__(
        self,
        handles: Mapping[str, Any],
        descriptions: Mapping[str, ModelDescription],
        unavailable: Mapping[str, str] | None = None,
        windows: Mapping[str, int] | None = None,
    ) -> None:
        windows = windows or {}
        self.models = {
            name: Coalescer(
                handle,
                name,
                windows.get(name, 2),
                max(64, 2 * descriptions[name].config.max_batch_size),
            )
            for name, handle in handles.items()
        }
        self.descriptions = dict(descriptions)
        self.unavailable = dict(unavailable or {})
        #: The HTTP app's trace extension needs a tracer; tracing stays off on Ray.
        self.tracer = Tracer()
        self.ready = True

    # ------------------------------------------------------------------ lookups
    def _describe(self, name: str, version: str = "") -> ModelDescription:
        description = self.descriptions.get(name)
        if description is None:
            if name in self.unavailable:
                raise Unavailable(f"model {name!r} is not ready: {self.unavailable[name]}")
            raise NotFound(f"unknown model: {name!r}")
        if version and version not in description.versions:
            raise NotFound(
                f"model {name!r} has no version {version!r} "
                f"(served versions: {list(description.versions)})"
            )
        return description

    def version(self, name: str, version: str = "") -> tuple[ModelDescription, str]:
        """The served version named (or the latest); 404 if unknown, 503 if not ready."""
        description = self._describe(name, version)
        return description, version or description.versions[-1]

    def is_ready(self, name: str, version: str = "") -> bool:
        return name in self.descriptions and (
            not version or version in self.descriptions[name].versions
        )

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self._describe(name, version).config

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        return self._describe(name, version).metadata

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows = [row for d in self.descriptions.values() for row in d.index]
        if not ready_only:
            rows += [
                IndexEntry(name, "", ModelState.UNAVAILABLE, reason)
                for name, reason in self.unavailable.items()
            ]
        return sorted(rows, key=lambda row: (row.name, row.version))

    def stats(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        raise Unsupported(
            "the statistics extension is not available on Ray: each replica counts its own "
            "requests; read Ray Serve's metrics (ray_serve_deployment_* on the cluster's "
            "metrics port) instead"
        )

    # ------------------------------------------------------------------ inference
    async def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        return self.stats(name, version)

    async def share(self, op: str, *args: Any) -> None:
        """Settings changes stay on the ingress: there are no sibling worker processes."""

    @property
    def monitoring(self) -> Any:
        raise Unsupported(
            "the request log, feedback and fairness monitors are not available on Ray: each "
            "replica is its own engine; serve the repository with forwardpass serve to monitor it"
        )

    def generate(self, name: str, version: str, text: str, *args: Any, **kwargs: Any) -> Any:
        raise Unsupported(
            "text generation is not available on Ray: its scheduler keeps each sequence's "
            "cache in one process; serve generation models with forwardpass serve"
        )

    @property
    def drift(self) -> Any:
        raise Unsupported(
            "drift monitoring is not available on Ray: each replica is its own engine; serve "
            "the repository with forwardpass serve to monitor it"
        )

    async def infer(
        self, request: InferRequest, trace: Trace | None = None, *, sampled: bool = False
    ) -> InferResponse:
        name = request.model_name
        self._describe(name, request.model_version)
        return await self.models[name].infer(request)

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        description = self._describe(request.model_name, request.model_version)
        if description.config.decoupled:
            raise Unsupported(
                f"model {request.model_name!r} is decoupled: streaming its responses is not "
                "available on Ray yet; serve it with forwardpass serve"
            )
        yield await self.infer(request)

    async def load(self, name: str, config_override: Any = None, files: Any = None) -> None:
        raise Unavailable(_NO_CONTROL)

    async def unload(self, name: str) -> None:
        raise Unavailable(_NO_CONTROL)
