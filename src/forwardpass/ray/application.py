"""Build the Ray Serve application of a model repository.

One deployment per model (:class:`~forwardpass.ray.replica.ModelReplica`, options from
:func:`~forwardpass.ray.options.deployment_options`), ensembles bound to the deployments of
their steps, and one ingress (:class:`~forwardpass.ray.ingress.Ingress`) that speaks the
Open Inference Protocol over HTTP and holds a handle to every model deployment.

:func:`app` is also a Ray Serve application builder::

    serve run forwardpass.ray:app repository=/models replica_cpus=0.5
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from forwardpass.errors import ForwardpassError, InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig
from forwardpass.pipeline import Pipeline
from forwardpass.ray.options import deployment_options
from forwardpass.repository import ModelRepository

__all__ = ["INGRESS", "RayOptions", "app", "build", "build_with_demand"]

log = logging.getLogger("forwardpass.ray")

#: The ingress deployment's name (model deployments are named after their models).
INGRESS = "forwardpass-ingress"


@dataclass(frozen=True, slots=True)
class RayOptions:
    """How a repository is laid out on a Ray cluster (``serve run`` passes these as
    ``key=value``)."""

    repository: Path
    #: CPUs each model replica reserves unless its config's ``ray_actor_options`` say.
    replica_cpus: float = 1.0
    #: CPUs each ingress replica reserves (it parses and renders the wire).
    ingress_cpus: float = 1.0
    ingress_replicas: int = 1
    #: Requests one ingress replica holds at once.
    ingress_ongoing_requests: int = 1024
    max_request_bytes: int = 64 * 1024 * 1024
    #: ``host:port`` where the ingress serves HTTP itself (forwardpass's server, port 0 picks
    #: one); empty: only through Ray Serve's proxy. Needs ``ingress_replicas`` 1.
    listen: str = ""
    #: ``host:port`` where the ingress serves Triton's gRPC protocol (forwardpass's gRPC
    #: server; needs the grpc extra); empty: no gRPC.
    grpc_listen: str = ""

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> RayOptions:
        """From ``serve run``'s string arguments; unknown or malformed ones are an error."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - known.keys())
        if unknown:
            raise InvalidArgument(
                f"unknown forwardpass.ray:app argument(s) {unknown}; known: {sorted(known)}"
            )
        if "repository" not in args:
            raise InvalidArgument("forwardpass.ray:app needs repository=PATH")
        values: dict[str, Any] = {}
        for key, raw in args.items():
            number = known[key].type in ("float", float)
            try:
                if key == "repository":
                    values[key] = Path(raw)
                elif key in ("listen", "grpc_listen"):
                    values[key] = str(raw)
                else:
                    values[key] = float(raw) if number else int(raw)
            except (TypeError, ValueError):
                what = "a number" if number else "an integer"
                raise InvalidArgument(
                    f"forwardpass.ray:app argument {key} must be {what}, got {raw!r}"
                ) from None
        return cls(**values)


def app(repository: str | os.PathLike[str] | Mapping[str, Any] | RayOptions) -> Any:
    """The Ray Serve application of ``repository`` (a path, :class:`RayOptions`, or the
    ``serve run`` arguments): pass it to ``serve.run``."""
    if isinstance(repository, RayOptions):
        options = repository
    elif isinstance(repository, Mapping):
        options = RayOptions.from_args(repository)
    else:
        options = RayOptions(Path(repository))
    return build(options)


def build(options: RayOptions) -> Any:
    """Bind every model of the repository; models that cannot be read or laid out on Ray
    are left out, logged, and listed as UNAVAILABLE by the ingress."""
    return build_with_demand(options)[0]


def build_with_demand(options: RayOptions) -> tuple[Any, dict[str, float]]:
    """:func:`build`, and the CPUs and GPUs its replicas reserve at start (autoscaled
    deployments count their initial or minimum replicas)."""
    from ray import serve

    from forwardpass.ray.ingress import Ingress
    from forwardpass.ray.replica import ModelReplica

    root = options.repository.resolve()
    if not root.is_dir():
        raise InvalidArgument(f"model repository {root} is not a folder")
    repository = ModelRepository(root)
    configs: dict[str, ModelConfig] = {}
    unavailable: dict[str, str] = {}
    for name, entry in repository.read_all().items():
        if isinstance(entry, ForwardpassError):
            unavailable[name] = entry.message
        else:
            configs[name] = entry.config
    if (options.listen or options.grpc_listen) and options.ingress_replicas != 1:
        raise InvalidArgument(
            "listen= and grpc_listen= serve from the one ingress replica: with "
            "ingress_replicas > 1, leave them empty and use Ray Serve's proxy"
        )
    if INGRESS in configs:
        raise InvalidArgument(f"a model may not be named {INGRESS!r} on Ray (the ingress is)")
    bound: dict[str, Any] = {}
    demands: dict[str, dict[str, float]] = {}
    windows: dict[str, int] = {}

    def bind(name: str, chain: tuple[str, ...]) -> Any:
        if name in bound:
            return bound[name]
        if name in chain:
            raise InvalidModelConfig(f"ensembles call each other in a cycle: {[*chain, name]}")
        if name not in configs:
            reason = unavailable.get(name, "it is not in the repository")
            raise InvalidModelConfig(f"model {name!r} cannot be deployed: {reason}")
        config = configs[name]
        deployment_kwargs = deployment_options(config, options.replica_cpus)
        steps: dict[str, Any] | None = None
        if config.is_ensemble:
            steps = {}
            for step in Pipeline(config).models:
                try:
                    steps[step] = bind(step, (*chain, name))
                except ForwardpassError as exc:
                    raise InvalidModelConfig(f"ensemble step {step!r}: {exc.message}") from None
        deployment = serve.deployment(**deployment_kwargs.as_kwargs())(ModelReplica)
        bound[name] = deployment.bind(str(root), name, deployment_kwargs.kind, steps)
        demands[name] = _demand(deployment_kwargs.as_kwargs())
        # Two calls in flight per replica: one computing, one queued behind it.
        scaling = deployment_kwargs.autoscaling_config or {}
        windows[name] = 2 * int(deployment_kwargs.num_replicas or scaling.get("max_replicas", 1))
        return bound[name]

    for name in sorted(configs):
        try:
            bind(name, ())
        except ForwardpassError as exc:
            unavailable[name] = exc.message
    for name, reason in sorted(unavailable.items()):
        log.error("model %s is UNAVAILABLE on Ray: %s", name, reason)
        bound.pop(name, None)
        demands.pop(name, None)
    ingress = serve.deployment(
        name=INGRESS,
        num_replicas=options.ingress_replicas,
        max_ongoing_requests=options.ingress_ongoing_requests,
        ray_actor_options={"num_cpus": options.ingress_cpus},
    )(Ingress)
    total = {"CPU": options.ingress_cpus * options.ingress_replicas, "GPU": 0.0}
    for demand in demands.values():
        for key, value in demand.items():
            total[key] += value
    windows = {name: windows[name] for name in bound}
    application = ingress.bind(
        bound, unavailable, windows, options.max_request_bytes, options.listen, options.grpc_listen
    )
    return application, total


def _demand(kwargs: Mapping[str, Any]) -> dict[str, float]:
    actor = kwargs["ray_actor_options"]
    replicas = kwargs.get("num_replicas")
    if replicas is None:
        scaling = kwargs.get("autoscaling_config") or {}
        replicas = scaling.get("initial_replicas", scaling.get("min_replicas", 1))
    return {
        "CPU": float(actor.get("num_cpus", 1)) * replicas,
        "GPU": float(actor.get("num_gpus", 0)) * replicas,
    }
