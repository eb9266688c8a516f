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
    "--read-timeout",
    "read_timeout_s",
    type=float,
    default=None,
    help="Seconds a request may take to arrive before a 408 (default 30; 0 waits forever).",
)
@click.option(
    "--max-connections", type=int, default=None, help="Open connections at most (default 2048)."
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate (chain): serve HTTPS only. Needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM CA bundle: require client certificates signed by it (mutual TLS).",
)
@click.option(
    "--cors-origins",
    default=None,
    help="Comma-separated origins browsers may call from, or '*' (default: CORS off).",
)
def serve(
    model_repository: Path | None,
    host: str | None,
    http_port: int | None,
    max_request_bytes: int | None,
    models: tuple[str, ...],
    log_level: str | None,
    allow_client_shm: bool | None,
    read_timeout_s: float | None,
    max_connections: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    cors_origins: str | None,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2) on HTTP."""
    from forwardpass.config import ServerConfig
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
            read_timeout_s=read_timeout_s,
            max_connections=max_connections,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            cors_origins=None
            if cors_origins is None
            else tuple(o.strip() for o in cors_origins.split(",") if o.strip()),
        )
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if not config.model_repository.is_dir():
        raise click.ClickException(f"model repository {config.model_repository} is not a folder")

    scheme = "https" if config.tls_cert is not None else "http"

    def announce(port: int) -> None:
        click.echo(f"forwardpass listening on {scheme}://{config.host}:{port}", err=False)

    try:
        run_server(config, on_ready=announce)
    except ForwardpassError as exc:  # a busy port, an unreadable TLS file: one line, exit 1
        raise click.ClickException(exc.message) from None
