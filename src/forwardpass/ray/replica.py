"""One model's Ray Serve replica: forwardpass's own engine, serving that one model.

Each replica loads its model with one instance (Ray's replicas are the instance group), so
the engine's dynamic batcher, validation, processing and typed results run inside it exactly
as in ``forwardpass serve``. An ensemble's replica loads only the ensemble: its engine sends
each step to the step model's deployment through a Ray Serve handle.

Requests and responses cross the process boundary as forwardpass's own dataclasses
(:class:`~forwardpass.types.InferRequest` / :class:`~forwardpass.types.InferResponse`): Ray
serializes their NumPy arrays as out-of-band buffers (pickle protocol 5, zero-copy from the
object store for large ones), never by pickling the data into a byte string.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forwardpass.config import ServerConfig
from forwardpass.engine import Engine
from forwardpass.errors import ForwardpassError, InternalError, Unavailable
from forwardpass.model_config import ModelConfig
from forwardpass.repository import ModelRepository
from forwardpass.repository.repository import load_config_file
from forwardpass.results import IndexEntry, ModelMetadata, ModelStatistics
from forwardpass.types import InferRequest, InferResponse

__all__ = ["ModelDescription", "ModelReplica", "replica_override"]


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """What the ingress answers about a model without asking its replicas again."""

    name: str
    config: ModelConfig
    metadata: ModelMetadata
    #: The model's rows of the repository index (one per served version).
    index: tuple[IndexEntry, ...]
    versions: tuple[str, ...]


def replica_override(repository: ModelRepository, name: str, kind: str) -> dict[str, Any] | None:
    """The model's config with one instance of ``kind``: what each replica loads. ``None``
    for an ensemble (it has no instances)."""
    config_file = repository.config_file(name)
    raw = load_config_file(config_file) if config_file is not None else {}
    if raw.get("platform") == "ensemble" or "ensemble_scheduling" in raw:
        return None
    raw["instance_group"] = [{"count": 1, "kind": kind}]
    return raw


class StepRouter:
    """An ensemble replica's way to its steps: each step model's deployment handle, the
    steps of concurrent ensemble requests coalesced into one call per step model."""

    def __init__(self, handles: Mapping[str, Any]) -> None:
        from forwardpass.ray.calls import Coalescer

        self.steps = {name: Coalescer(h, name) for name, h in handles.items()}

    async def __call__(self, request: InferRequest) -> InferResponse:
        step = self.steps.get(request.model_name)
        if step is None:
            raise InternalError(f"ensemble step model {request.model_name!r} has no deployment")
        return await step.infer(request)


class ModelReplica:
    """The deployment class of one model (wrapped by ``serve.deployment`` in :mod:`application`)."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self, root: str, name: str, kind: str, steps: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        repository = ModelRepository(Path(root))
        config = ServerConfig(
            model_repository=Path(root),
            model_control_mode="explicit",
            grpc=False,
            metrics=False,
        )
        self.engine = Engine(repository, config)
        if steps:
            self.engine.route_steps(StepRouter(steps))
        await self.engine.start()  # explicit mode with no --load-model: loads nothing yet
        override = replica_override(repository, name, kind)
        # A model that cannot load fails the replica's constructor, so Ray reports the
        # deployment as failed with this message instead of serving a broken model.
        await self.engine.load(name, config_override=override)

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.engine.infer(request)

    async def infer_batch(
        self, requests: list[InferRequest]
    ) -> list[InferResponse | ForwardpassError]:
        """Requests the ingress sent together: each answered on its own (a response or its
        error), all submitted at once so the engine's batcher batches them."""
        results = await asyncio.gather(
            *(self.engine.infer(r) for r in requests), return_exceptions=True
        )
        return [
            r
            if isinstance(r, InferResponse | ForwardpassError)
            else InternalError(f"model {self.name!r}: {type(r).__name__}: {r}")
            for r in results
        ]

    def describe(self) -> ModelDescription:
        handle = self.engine.handle(self.name)
        return ModelDescription(
            name=self.name,
            config=handle.config,
            metadata=self.engine.metadata(self.name),
            index=tuple(e for e in self.engine.index() if e.name == self.name),
            versions=tuple(str(v) for v in sorted(handle.versions)),
        )

    def stats(self) -> list[ModelStatistics]:
        return self.engine.stats(self.name)

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose model is not READY is restarted."""
        try:
            self.engine.version(self.name)
        except ForwardpassError as exc:
            raise Unavailable(f"model {self.name!r} is not ready: {exc.message}") from None
