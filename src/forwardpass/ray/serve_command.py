"""``forwardpass serve --ray [ADDRESS]``: the serve command's options, on a Ray cluster."""

from __future__ import annotations

import click

from forwardpass.config import ServerConfig
from forwardpass.errors import ForwardpassError

__all__ = ["serve_on_ray"]


def serve_on_ray(config: ServerConfig, address: str | None, scheme: str) -> None:
    """Deploy ``config.model_repository`` on the cluster at ``address`` (a new local one when
    ``None``) and serve until Ctrl-C. Options that only the in-process server has (gRPC, TLS,
    access control, tracing, shared memory) are refused rather than silently ignored."""
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

    if config.grpc:
        click.echo(
            "note: --ray serves HTTP only (gRPC through Ray's proxy is not available yet)",
            err=True,
        )

    def announce(address: str) -> None:
        click.echo(f"forwardpass on Ray listening on http://{address}")

    options = RayOptions(config.model_repository, max_request_bytes=config.max_request_bytes)
    try:
        serve_forever(options, address, config.host, config.http_port, on_ready=announce)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
