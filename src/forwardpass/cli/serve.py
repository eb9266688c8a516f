"""``forwardpass serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 8001; 0 picks one).")
@click.option("--no-grpc", "no_grpc", is_flag=True, default=False, help="Serve HTTP only, no gRPC.")
@click.option(
    "--no-dashboard",
    "no_dashboard",
    is_flag=True,
    default=False,
    help="Do not serve the dashboard page at / (it answers 404, as Triton's does).",
)
@click.option("--max-request-bytes", type=int, default=None, help="Largest request body accepted.")
@click.option(
    "--max-grpc-message-bytes",
    type=int,
    default=None,
    help="Largest gRPC message received or sent (default: --max-request-bytes).",
)
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
@click.option("--log-format", default=None, help="Log line layout: default or ISO8601.")
@click.option("--log-file", default=None, help="Append log lines to this file (default stderr).")
@click.option("--trace-file", default=None, help="Where traces are written (Triton's format).")
@click.option(
    "--trace-level",
    multiple=True,
    help="OFF, TIMESTAMPS or TENSORS; repeat for several (default OFF).",
)
@click.option("--trace-rate", type=int, default=None, help="Trace every N-th request (1000).")
@click.option("--trace-count", type=int, default=None, help="Traces to take; -1 = no limit.")
@click.option(
    "--trace-log-frequency",
    "--log-frequency",
    "trace_log_frequency",
    type=int,
    default=None,
    help="Write every N traces to <trace-file>.<index>; 0 writes all to <trace-file>.",
)
@click.option(
    "--trace-config",
    "trace_config",
    multiple=True,
    help="Triton's spelling: level=, rate=, count=, mode=triton|opentelemetry, triton,file=, "
    "triton,log-frequency=, opentelemetry,url=, opentelemetry,resource=KEY=VALUE, "
    "opentelemetry,bsp_max_queue_size=|bsp_schedule_delay=|bsp_max_export_batch_size=. "
    "The flags above win over it.",
)
@click.option(
    "--cache-config",
    default=None,
    help="Response cache for models with response_cache enabled, as Triton spells it: "
    "local,size=BYTES.",
)
@click.option(
    "--workers",
    default=None,
    help="Server processes sharing the ports, each with its own models (CPU): a number up to "
    "the usable cores, or 'auto' for all of them (default 1). Statistics, metrics, model "
    "loads and settings span them all.",
)
@click.option(
    "--request-log",
    default=None,
    help="Log every request to this SQLite file (WAL mode); read it with 'forwardpass log'.",
)
@click.option(
    "--monitor-payload-sample",
    type=float,
    default=None,
    help="Fraction of requests whose inputs and outputs the request log keeps (0.01).",
)
@click.option(
    "--request-log-max-bytes", type=int, default=None, help="Request log size limit (1 GiB)."
)
@click.option(
    "--request-log-max-age-s",
    type=float,
    default=None,
    help="Seconds a request log row is kept (7 days).",
)
@click.option(
    "--processing-workers",
    default=None,
    metavar="N|auto",
    help="Worker processes for declared input processing (image decoding), off the serving "
    "core; auto: one per --processing-cpus core, or every usable core but one. "
    "Default 0: threads of the server process.",
)
@click.option(
    "--processing-cpus",
    default=None,
    metavar="LIST",
    help="Pin the processing workers to these cores (1 or 2-5,7), e.g. with the server under "
    "taskset -c 0 and the workers on core 1.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Serve the repository on a Ray Serve cluster: the one at ADDRESS (host:port of its "
    "GCS, or ray://host:port), or a new local one when no address is given. Needs the ray "
    "extra.",
)
def serve(
    target: str | None,
    name: str | None,
    model_repository: Path | None,
    host: str | None,
    http_port: int | None,
    grpc_port: int | None,
    no_grpc: bool,
    no_dashboard: bool,
    max_request_bytes: int | None,
    max_grpc_message_bytes: int | None,
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
    allow_client_shm: bool | None,
    read_timeout_s: float | None,
    max_connections: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    cors_origins: str | None,
    log_format: str | None,
    log_file: str | None,
    trace_file: str | None,
    trace_level: tuple[str, ...],
    trace_rate: int | None,
    trace_count: int | None,
    trace_log_frequency: int | None,
    trace_config: tuple[str, ...],
    cache_config: str | None,
    workers: str | None,
    request_log: str | None,
    monitor_payload_sample: float | None,
    request_log_max_bytes: int | None,
    request_log_max_age_s: float | None,
    processing_workers: str | None,
    processing_cpus: str | None,
    ray_address: str | None,
) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe V2) over HTTP and gRPC.

    TARGET (``my_module:MyModel``) serves one native Python class instead: a class with
    ``setup()`` and a batch ``predict()``, found from the current directory.
    """
    import tempfile

    from forwardpass.access import AccessPolicy
    from forwardpass.config import ServerConfig
    from forwardpass.engine.cache import check_capacity, parse_cache_config
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
                **{**ctx.params, "target": None, "name": None, "model_repository": Path(folder)},
            )
        return

    worker_count = _workers(workers)
    try:
        trace = _trace_config(trace_config)
        explicit = {
            "trace_file": trace_file,
            "trace_level": trace_level or None,
            "trace_rate": trace_rate,
            "trace_count": trace_count,
            "trace_log_frequency": trace_log_frequency,
        }
        trace.update({k: v for k, v in explicit.items() if v is not None})
        config = ServerConfig.from_env(
            model_repository=model_repository,
            host=host,
            http_port=http_port,
            grpc=False if no_grpc else None,
            dashboard=False if no_dashboard else None,
            grpc_port=grpc_port,
            max_request_bytes=max_request_bytes,
            max_grpc_message_bytes=max_grpc_message_bytes,
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
            allow_client_shm=allow_client_shm,
            read_timeout_s=read_timeout_s,
            max_connections=max_connections,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            cors_origins=None
            if cors_origins is None
            else tuple(o.strip() for o in cors_origins.split(",") if o.strip()),
            log_format=log_format,
            log_file=log_file,
            **trace,
            response_cache_bytes=parse_cache_config(cache_config) if cache_config else None,
            workers=worker_count,
            request_log=request_log,
            monitor_payload_sample=monitor_payload_sample,
            request_log_max_bytes=request_log_max_bytes,
            request_log_max_age_s=request_log_max_age_s,
            processing_cpus=processing_cpus,
            processing_workers=_processing_workers(processing_workers, processing_cpus),
        )
        # Checked here so that a bad value is a usage error, not a traceback at start-up.
        config.trace_settings()
        config.otel_settings()
        config.log_settings()
        AccessPolicy.from_config(config, "http")  # a bad spec fails here, not per request
        AccessPolicy.from_config(config, "grpc")
        check_capacity(config.response_cache_bytes)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if worker_count is None and config.workers > 1:  # FORWARDPASS_WORKERS: the same bounds
        _workers(str(config.workers), "FORWARDPASS_WORKERS")
    if not config.model_repository.is_dir():
        raise click.ClickException(f"model repository {config.model_repository} is not a folder")

    scheme = "https" if config.tls_cert is not None else "http"

    def announce(port: int, grpc_port: int | None) -> None:
        line = f"forwardpass listening on {scheme}://{config.host}:{port}"
        if grpc_port is not None:
            line += f" and grpc {config.host}:{grpc_port}"
        click.echo(line, err=False)

    if ray_address is not None:
        from forwardpass.ray.serve_command import serve_on_ray

        serve_on_ray(config, None if ray_address == "local" else ray_address, scheme)
        return
    try:
        if config.workers > 1:
            from forwardpass.cluster import run_workers

            run_workers(config, on_ready=announce)
        else:
            run_server(config, on_ready=announce)
    except ForwardpassError as exc:  # a busy port, an unreadable TLS file: one line, exit 1
        raise click.ClickException(exc.message) from None


def _workers(value: str | None, source: str = "'--workers'") -> int | None:
    """``--workers`` → a count (a bad one is a usage error: exit 2 with the reason)."""
    if value is None:
        return None
    from forwardpass.cluster import parse_workers
    from forwardpass.errors import InvalidArgument

    try:
        return parse_workers(value)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, param_hint=source) from None


def _processing_workers(value: str | None, cpus: str | None) -> int | None:
    """``--processing-workers``: a count, or ``auto``."""
    if value is None:
        return None
    if value.strip().lower() == "auto":
        from forwardpass.config import ServerConfig
        from forwardpass.processing.pool import auto_workers

        return auto_workers(ServerConfig(processing_cpus=cpus or "").processing_cpu_list)
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(
            f"expected a number of processes or auto, got {value!r}",
            param_hint="--processing-workers",
        ) from None


#: ``--trace-config`` setting names → ServerConfig fields (Triton's global and "triton," ones).
_TRACE_CONFIG = {
    "level": "trace_level",
    "rate": "trace_rate",
    "count": "trace_count",
    "file": "trace_file",
    "log-frequency": "trace_log_frequency",
}


def _trace_config(values: tuple[str, ...]) -> dict[str, Any]:
    """Triton's ``--trace-config [mode,]setting=value`` list → ServerConfig fields."""
    from forwardpass.errors import InvalidArgument

    out: dict[str, Any] = {}
    levels: list[str] = []
    opentelemetry: list[tuple[str, str]] = []
    for raw in values:
        spec = raw
        mode, sep, rest = spec.partition(",")
        if sep and "=" not in mode:
            if mode == "opentelemetry":
                # url, resource, bsp_*: checked by ServerConfig.otel_settings().
                name, eq, value = rest.partition("=")
                if not eq:
                    raise InvalidArgument(f"--trace-config {raw}: expected <setting>=<value>")
                opentelemetry.append((name, value))
                out["trace_opentelemetry"] = tuple(opentelemetry)
                continue
            if mode != "triton":
                raise InvalidArgument(f"--trace-config {raw}: unknown trace mode {mode!r}")
            spec = rest
        name, eq, value = spec.partition("=")
        if not eq:
            raise InvalidArgument(f"--trace-config {raw}: expected <setting>=<value>")
        if name == "mode":
            if value not in ("triton", "opentelemetry"):
                raise InvalidArgument(
                    f"--trace-config {raw}: unknown trace mode {value!r} (triton or opentelemetry)"
                )
            out["trace_mode"] = value
            continue
        field = _TRACE_CONFIG.get(name)
        if field is None:
            raise InvalidArgument(
                f"--trace-config {raw}: unknown setting {name!r} (level, rate, count, mode, "
                "file, log-frequency)"
            )
        if field == "trace_level":
            levels.append(value)
            out[field] = tuple(levels)
        elif field == "trace_file":
            out[field] = value
        else:
            try:
                out[field] = int(value)
            except ValueError:
                raise InvalidArgument(
                    f"--trace-config {raw}: {name} must be an integer, got {value!r}"
                ) from None
    return out
