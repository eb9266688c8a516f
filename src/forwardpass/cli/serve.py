"""``forwardpass serve``."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["serve"]


@click.command()
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model repository folder (default: the embedded repository).",
)
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--http-port", type=int, default=None, help="HTTP port (default 8000; 0 picks one).")
@click.option("--max-request-bytes", type=int, default=None, help="Largest request body accepted.")
@click.option(
    "--model-control-mode",
    type=click.Choice(["none", "poll", "explicit"]),
    default=None,
    help="As Triton's: none (default) loads every model and refuses the load/unload API; "
    "poll also rescans the repository; explicit loads only --load-model and allows the API.",
)
@click.option(
    "--repository-poll-secs",
    type=float,
    default=None,
    help="Seconds between repository scans in poll mode (default 15).",
)
@click.option(
    "--load-model",
    "--model",
    "load_models",
    multiple=True,
    help="Explicit mode: load this model at start (repeat; '*' loads all).",
)
@click.option(
    "--allow-model-upload/--no-allow-model-upload",
    default=None,
    help="Explicit mode: accept model files in load requests (off by default: an uploaded "
    "model is code the server runs).",
)
@click.option(
    "--strict-readiness/--no-strict-readiness",
    default=None,
    help="Server ready only when every model it was asked to load is ready (default on).",
)
@click.option(
    "--http-restricted-api",
    multiple=True,
    help="<group>,<group>...:<KEY>=<VALUE>: these API groups require header KEY=VALUE "
    "(groups: health, metadata, inference, shared-memory, model-config, model-repository, "
    "statistics, trace, logging). Repeatable.",
)
@click.option(
    "--grpc-restricted-protocol",
    multiple=True,
    help="The same for gRPC (metadata triton-grpc-protocol-<KEY>). Repeatable.",
)
@click.option(
    "--api-key",
    default=None,
    help="Require this key for inference (prefer FORWARDPASS_API_KEY: a flag shows in ps).",
)
@click.option(
    "--api-key-header",
    default=None,
    help="Header carrying the key (default authorization, as 'Bearer <key>').",
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
def serve(
    model_repository: Path | None,
    host: str | None,
    http_port: int | None,
    max_request_bytes: int | None,
    model_control_mode: str | None,
    repository_poll_secs: float | None,
    load_models: tuple[str, ...],
    allow_model_upload: bool | None,
    strict_readiness: bool | None,
    http_restricted_api: tuple[str, ...],
    grpc_restricted_protocol: tuple[str, ...],
    api_key: str | None,
    api_key_header: str | None,
    log_level: str | None,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2) on HTTP."""
    from forwardpass.access import AccessPolicy
    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError
    from forwardpass.serving import run_server

    try:
        config = ServerConfig.from_env(
            model_repository=model_repository,
            host=host,
            http_port=http_port,
            max_request_bytes=max_request_bytes,
            model_control_mode=model_control_mode,
            repository_poll_secs=repository_poll_secs,
            load_models=load_models or None,
            allow_model_upload=allow_model_upload,
            strict_readiness=strict_readiness,
            http_restricted_api=http_restricted_api or None,
            grpc_restricted_protocol=grpc_restricted_protocol or None,
            api_key=api_key,
            api_key_header=api_key_header.lower() if api_key_header else None,
            log_level=log_level,
        )
        AccessPolicy.from_config(config, "http")  # a bad spec fails here, not per request
        AccessPolicy.from_config(config, "grpc")
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if not config.model_repository.is_dir():
        raise click.ClickException(f"model repository {config.model_repository} is not a folder")

    def announce(port: int) -> None:
        click.echo(f"forwardpass listening on http://{config.host}:{port}", err=False)

    run_server(config, on_ready=announce)
