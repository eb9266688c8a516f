"""``forwardpass serve --ray [ADDRESS]``: the serve command's options, on a Ray cluster."""

from __future__ import annotations

import click

from forwardpass.config import ServerConfig
from forwardpass.errors import ForwardpassError

__all__ = ["serve_on_ray"]


def serve_on_ray(config: ServerConfig, address: str | None, scheme: str) -> None:
    """Deploy ``config.model_repository`` on the cluster at ``address`` (a new local one when
    ``None``) and serve until Ctrl-C. Options the Ray ingress does not apply (TLS, access
    control) are refused rather than silently ignored."""
    if scheme != "http":
        raise click.ClickException("--ray serves plain HTTP (Ray Serve's proxy): drop --tls-*")
    if config.api_key or config.http_restricted_api:
        raise click.ClickException(
            "--ray does not apply --api-key or --http-restricted-api (Ray Serve's proxy "
            "answers the port); put an authenticating proxy in front of the cluster instead"
        )
    try:
        import ray  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "--ray needs the ray extra: pip install 'forwardpass[ray]'"
        ) from None
    from forwardpass.ray.application import RayOptions
    from forwardpass.ray.cluster import serve_forever

    grpc_listen = f"{config.host}:{config.grpc_port}" if config.grpc else ""
    if grpc_listen:
        try:
            import grpc  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "serving gRPC needs the grpc extra (pip install 'forwardpass[grpc]'); "
                "or turn gRPC off with --no-grpc"
            ) from None

    def announce(http: str, grpc: str) -> None:
        line = f"forwardpass on Ray listening on http://{http}"
        click.echo(line + (f" and grpc {grpc}" if grpc else ""))

    options = RayOptions(
        config.model_repository,
        max_request_bytes=config.max_request_bytes,
        grpc_listen=grpc_listen,
    )
    try:
        serve_forever(options, address, config.host, config.http_port, on_ready=announce)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
