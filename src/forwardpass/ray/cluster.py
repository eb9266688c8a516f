"""Connect to a Ray cluster (or start a local one) and run the repository's application.

Every wait is bounded: a cluster address that does not answer fails within
``connect_timeout_s`` with the address in the message, and an application whose replicas do
not all come up (too few CPUs or GPUs for the replicas asked for, a model that fails to
load in its replica) fails within ``deploy_timeout_s`` with Ray's reason, instead of hanging.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from forwardpass.errors import ForwardpassError, InvalidArgument, Unavailable
from forwardpass.ray.application import RayOptions, build_with_demand

__all__ = ["APP_NAME", "connect", "deploy", "serve_forever"]

log = logging.getLogger("forwardpass.ray")

#: The Serve application's name on the cluster.
APP_NAME = "forwardpass"


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast when ``host:port`` accepts no TCP connection (ray.init would retry long)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself; ray.init's wait is bounded below
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout_s):
            pass
    except OSError as exc:
        raise Unavailable(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
            "(is `ray start --head` running there, and is the address the GCS port?)"
        ) from None


def _bounded(what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run ``fn`` in a daemon thread; :class:`Unavailable` if it takes over ``timeout_s``."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"forwardpass-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise Unavailable(f"{what} did not finish within {timeout_s:g} s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def connect(address: str | None, timeout_s: float = 30.0, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a local one when it is ``None``."""
    import ray

    if ray.is_initialized():
        return
    if address is not None:
        _probe(address, timeout_s)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address is None:
        # A new local cluster: nothing to wait on that can hang, and ray.init in the main
        # thread installs Ray's signal handlers.
        ray.init(num_cpus=num_cpus, **kwargs)
        return
    try:
        _bounded(
            f"connecting to the Ray cluster at {address}",
            lambda: ray.init(address=address, **kwargs),
            timeout_s,
        )
    except ConnectionError as exc:
        raise Unavailable(f"cannot reach the Ray cluster at {address}: {exc}") from None


def deploy(
    options: RayOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    timeout_s: float = 600.0,
    local: bool = True,
    proxy: bool = True,
) -> Any:
    """Run the application on the connected cluster, Ray Serve's HTTP proxy on
    ``host:port`` unless ``proxy`` is false (then ``options.listen`` must have the ingress
    listen itself). Returns the ingress's handle once every replica is up.

    ``local`` says the cluster cannot grow (one this process started): replicas that ask
    for more CPUs or GPUs than it has are then an error at once, not a wait forever; on a
    cluster that may autoscale they are a warning."""
    import ray
    from ray import serve

    application, demand = build_with_demand(options)
    _check_fits(demand, ray.cluster_resources(), autoscaled=not local)
    if proxy:
        serve.start(http_options={"host": host, "port": port})
    elif not options.listen:
        raise InvalidArgument("with Ray Serve's proxy off, the ingress must listen itself")
    else:
        serve.start(proxy_location="Disabled")
    try:
        return _bounded(
            "deploying the model repository on Ray",
            lambda: serve.run(application, name=APP_NAME, route_prefix="/" if proxy else None),
            timeout_s,
        )
    except ForwardpassError:
        raise
    except Exception as exc:  # Ray's deployment failure (a replica's constructor raised)
        raise Unavailable(f"the model repository failed to deploy on Ray: {exc}") from None


def _check_fits(demand: dict[str, float], cluster: dict[str, float], autoscaled: bool) -> None:
    short = {
        key: (need, cluster.get(key, 0.0))
        for key, need in demand.items()
        if need > cluster.get(key, 0.0) + 1e-9
    }
    if not short:
        return
    detail = ", ".join(
        f"{need:g} {key} (the cluster has {have:g})" for key, (need, have) in short.items()
    )
    message = (
        f"the replicas ask for {detail}: lower the models' instance_group counts or "
        "ray_actor_options, or the replica CPUs (replica_cpus / ingress_cpus)"
    )
    if autoscaled:
        log.warning("%s; waiting for the cluster to scale up", message)
        return
    raise Unavailable(message)


def serve_forever(
    options: RayOptions,
    address: str | None,
    host: str,
    port: int,
    on_ready: Callable[[str, str], None] | None = None,
    connect_timeout_s: float = 30.0,
) -> None:
    """``forwardpass serve --ray``: connect, deploy with the ingress serving HTTP on
    ``host:port`` itself (``on_ready`` gets the bound HTTP and gRPC addresses; gRPC when
    ``options.grpc_listen`` asks for it), serve until interrupted, remove
    the application (and stop the local cluster if this call started it)."""
    import ray
    from ray import serve

    connect(address, connect_timeout_s)
    try:
        ingress = deploy(
            replace(options, listen=f"{host}:{port}"), local=address is None, proxy=False
        )
        http = ingress.http_address.remote().result(timeout_s=connect_timeout_s)
        grpc = ingress.grpc_address.remote().result(timeout_s=connect_timeout_s)
        if on_ready is not None:
            on_ready(http, grpc)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("stopping: removing the forwardpass application from Ray")
        serve.delete(APP_NAME)
    finally:
        if address is None:
            serve.shutdown()
            ray.shutdown()
