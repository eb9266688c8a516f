"""``forwardpass serve``."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["serve"]


def native_repository(target: str, folder: Path, name: str | None = None) -> str:
    """Write a one-model repository in ``folder`` serving the native class ``module:Class``
    (found from the current directory); the model's name."""
    import os
    import re

    module, _, cls = target.partition(":")
    if not module or not cls:
        raise click.BadParameter(f"expected module:Class, got {target!r}", param_hint="TARGET")
    name = name or re.sub(r"(?<!^)(?=[A-Z])", "_", cls).lower()
    model = folder / name
    (model / "1").mkdir(parents=True)
    paths = os.pathsep.join(
        [os.getcwd(), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    (model / "config.pbtxt").write_text(
        'backend: "python"\n'
        f'parameters {{ key: "class" value {{ string_value: "{target}" }} }}\n'
        f'parameters {{ key: "module_path" value {{ string_value: "{paths}" }} }}\n'
    )
    return name


@click.command()
@click.argument("target", required=False)
@click.option("--name", default=None, help="Model name for TARGET (default: the class's name).")
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
def serve(
    target: str | None,
    name: str | None,
    model_repository: Path | None,
    host: str | None,
    http_port: int | None,
    max_request_bytes: int | None,
    models: tuple[str, ...],
    log_level: str | None,
    allow_client_shm: bool | None,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2) on HTTP.

    TARGET (``my_module:MyModel``) serves one native Python class instead: a class with
    ``setup()`` and a batch ``predict()``, found from the current directory.
    """
    import tempfile

    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError
    from forwardpass.serving import run_server

    if target is not None:
        if model_repository is not None:
            raise click.UsageError("give either TARGET or --model-repository, not both")
        with tempfile.TemporaryDirectory(prefix="forwardpass-") as folder:
            native_repository(target, Path(folder), name)
            ctx = click.get_current_context()
            ctx.invoke(
                serve,
                target=None,
                name=None,
                model_repository=Path(folder),
                host=host,
                http_port=http_port,
                max_request_bytes=max_request_bytes,
                models=models,
                log_level=log_level,
                allow_client_shm=allow_client_shm,
            )
        return

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
        )
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if not config.model_repository.is_dir():
        raise click.ClickException(f"model repository {config.model_repository} is not a folder")

    def announce(port: int) -> None:
        click.echo(f"forwardpass listening on http://{config.host}:{port}", err=False)

    run_server(config, on_ready=announce)
