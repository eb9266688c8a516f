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
    "--model",
    "models",
    multiple=True,
    help="Load only these models at start (others can be loaded through the repository API).",
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
@click.option(
    "--allow-client-shm/--no-allow-client-shm",
    default=None,
    help="Let clients pass tensors through system shared memory (default off; trusts local "
    "processes, as Triton's --allow-client-shm).",
)
@click.option(
    "--cache-config",
    default=None,
    help="Response cache for models with response_cache enabled, as Triton spells it: "
    "local,size=BYTES.",
)
def serve(
    model_repository: Path | None,
    host: str | None,
    http_port: int | None,
    max_request_bytes: int | None,
    models: tuple[str, ...],
    log_level: str | None,
    allow_client_shm: bool | None,
    cache_config: str | None,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2) on HTTP."""
    from forwardpass.config import ServerConfig
    from forwardpass.engine.cache import check_capacity, parse_cache_config
    from forwardpass.errors import ForwardpassError
    from forwardpass.serving import run_server

    try:
        config = ServerConfig.from_env(
            model_repository=model_repository,
            host=host,
            http_port=http_port,
            max_request_bytes=max_request_bytes,
            load_all=False if models else None,
            load_models=models or None,
            log_level=log_level,
            allow_client_shm=allow_client_shm,
            response_cache_bytes=parse_cache_config(cache_config) if cache_config else None,
        )
        check_capacity(config.response_cache_bytes)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if not config.model_repository.is_dir():
        raise click.ClickException(f"model repository {config.model_repository} is not a folder")

    def announce(port: int) -> None:
        click.echo(f"forwardpass listening on http://{config.host}:{port}", err=False)

    run_server(config, on_ready=announce)
