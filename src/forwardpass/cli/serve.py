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
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 8001; 0 picks one).")
@click.option("--no-grpc", "no_grpc", is_flag=True, default=False, help="Serve HTTP only, no gRPC.")
@click.option("--max-request-bytes", type=int, default=None, help="Largest request body accepted.")
@click.option(
    "--max-grpc-message-bytes",
    type=int,
    default=None,
    help="Largest gRPC message received or sent (default: --max-request-bytes).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Load only these models at start (others can be loaded through the repository API).",
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
def serve(
    model_repository: Path | None,
    host: str | None,
    http_port: int | None,
    grpc_port: int | None,
    no_grpc: bool,
    max_request_bytes: int | None,
    max_grpc_message_bytes: int | None,
    models: tuple[str, ...],
    log_level: str | None,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2): HTTP and gRPC."""
    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError
    from forwardpass.serving import run_server

    try:
        config = ServerConfig.from_env(
            model_repository=model_repository,
            host=host,
            http_port=http_port,
            grpc=False if no_grpc else None,
            grpc_port=grpc_port,
            max_request_bytes=max_request_bytes,
            max_grpc_message_bytes=max_grpc_message_bytes,
            load_all=False if models else None,
            load_models=models or None,
            log_level=log_level,
        )
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if not config.model_repository.is_dir():
        raise click.ClickException(f"model repository {config.model_repository} is not a folder")

    def announce(port: int, grpc_port: int | None) -> None:
        line = f"forwardpass listening on http://{config.host}:{port}"
        if grpc_port is not None:
            line += f" and grpc {config.host}:{grpc_port}"
        click.echo(line, err=False)

    run_server(config, on_ready=announce)
