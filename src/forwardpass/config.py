"""Server configuration: the one place where defaults live.

The CLI and the environment are read into :class:`ServerConfig` (see :meth:`from_env`); nothing
else in forwardpass reads ``os.environ``. The object is frozen: derive a new one with
``dataclasses.replace`` rather than mutating it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

from forwardpass.errors import InvalidArgument

if TYPE_CHECKING:
    from forwardpass.monitor.logsettings import LogSettings
    from forwardpass.monitor.otel import OtelSettings
    from forwardpass.monitor.trace import TraceSettings

__all__ = ["DEFAULT_REPOSITORY", "MODEL_CONTROL_MODES", "ServerConfig"]

#: Triton's --model-control-mode values.
MODEL_CONTROL_MODES = ("none", "poll", "explicit")

#: The repository shipped inside the package (the digits classifier).
DEFAULT_REPOSITORY = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``forwardpass serve`` can be told. Environment: ``FORWARDPASS_<FIELD>``."""

    model_repository: Path = DEFAULT_REPOSITORY
    host: str = "127.0.0.1"
    http_port: int = 8000
    #: Serve Triton's gRPC protocol beside HTTP (one process, one engine).
    grpc: bool = True
    grpc_port: int = 8001
    #: Largest gRPC message received or sent, in bytes; 0 takes ``max_request_bytes``.
    max_grpc_message_bytes: int = 0
    #: Largest request body accepted, in bytes; larger ones get a 413 before being read whole.
    max_request_bytes: int = 64 * 1024 * 1024
    #: Queue bound per model when its config says max_queue_size 0 (Triton's "unbounded").
    default_max_queue_size: int = 4096
    #: A batch whose recent runs took less than this many microseconds runs on the event loop
    #: itself instead of a worker thread, for backends that allow it (ONNX Runtime) with one
    #: instance: the thread hop costs more than such a batch. 0 always uses the thread.
    inline_batch_us: int = 100
    #: Seconds an idle keep-alive connection stays open (0 keeps it until the client closes).
    keep_alive_s: float = 60.0
    #: Seconds a request's head and body may take to arrive (and a client may leave a response
    #: unread); a slower request gets a 408 and the connection is closed. 0 waits forever.
    read_timeout_s: float = 30.0
    #: Open client connections at most; one more gets a 503 and is closed.
    max_connections: int = 2048
    #: TLS: a PEM certificate (chain) and its private key make the server speak only HTTPS.
    #: Named for the server, not the wire, so a gRPC endpoint can serve the same pair.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    tls_ca: Path | None = None
    #: Origins a browser may call from (CORS), or ``("*",)`` for any; empty turns CORS off.
    cors_origins: tuple[str, ...] = ()
    #: Seconds to let in-flight requests finish on shutdown.
    shutdown_grace_s: float = 10.0
    #: Triton's model control: ``none`` loads every model at start and refuses the repository
    #: load/unload API; ``poll`` does the same and rescans the repository every
    #: ``repository_poll_secs``; ``explicit`` loads only ``load_models`` and allows the API.
    model_control_mode: str = "none"
    repository_poll_secs: float = 15.0
    #: Models loaded at start in explicit mode; ``("*",)`` loads them all.
    load_models: tuple[str, ...] = ()
    #: Accept model files in repository load requests (``file:`` parameters). Off by default:
    #: an uploaded model is code the server runs. Only allowed with explicit model control.
    allow_model_upload: bool = False
    #: ``/v2/health/ready`` is true only when every model the server was asked to load is
    #: ready (Triton's --strict-readiness); false: ready once started.
    strict_readiness: bool = True
    #: Triton's --http-restricted-api / --grpc-restricted-protocol: ``groups:KEY=VALUE`` each.
    http_restricted_api: tuple[str, ...] = ()
    grpc_restricted_protocol: tuple[str, ...] = ()
    #: A key the inference API requires (empty: none), sent in ``api_key_header``: with the
    #: default ``authorization`` as ``Bearer <key>``, in any other header as the bare key.
    api_key: str = ""
    api_key_header: str = "authorization"
    #: Serve Prometheus metrics at /metrics.
    metrics: bool = True
    #: Serve the dashboard page at ``/`` (static files; off: ``/`` answers 404, as Triton's).
    dashboard: bool = True
    #: Let clients register system shared memory regions and pass tensors through them
    #: (Triton's --allow-client-shm). Off by default, as in Triton: a client that can register
    #: a region makes the server read and write memory of this host.
    allow_client_shm: bool = False
    #: Bytes of the response cache that models with ``response_cache { enable: true }`` use
    #: (Triton's ``--cache-config local,size=BYTES``); 0: no cache.
    response_cache_bytes: int = 0
    #: The request log (SQLite, WAL mode); "" logs nothing. Models opt out with
    #: ``monitoring { enable: false }``; a model's ``monitoring.fairness`` works without it.
    request_log: str = ""
    #: Fraction of requests whose full inputs and outputs the request log keeps (0..1); a
    #: model's ``monitoring.payload_sample`` wins.
    monitor_payload_sample: float = 0.01
    #: Request-log retention: rows older than this many seconds, and the oldest rows beyond
    #: this many bytes, are deleted.
    request_log_max_age_s: float = 7 * 24 * 3600.0
    request_log_max_bytes: int = 1 << 30
    #: Records waiting for the monitors at most; more are dropped and counted.
    monitor_queue_size: int = 10_000
    #: Worker processes that run declared input processing (image decoding and resizing) off
    #: the serving core; 0 runs it in threads of the server process (models may still ask
    #: for the pool with ``pool: process`` in their processing declaration).
    processing_workers: int = 0
    #: The cores those processes are pinned to ("1", "2-5,7"); "" leaves them where the
    #: server runs.
    processing_cpus: str = ""
    log_level: str = "INFO"
    #: Triton's log line layout: "default" or "ISO8601".
    log_format: str = "default"
    #: Append log lines to this file ("" writes them to stderr).
    log_file: str = ""
    #: Triton's trace settings at start-up (``--trace-config``); the trace extension's
    #: requests change them at run time. An empty level is OFF.
    trace_file: str = ""
    trace_level: tuple[str, ...] = ()
    trace_rate: int = 1000
    trace_count: int = -1
    trace_log_frequency: int = 0
    #: "triton" (the trace file) or "opentelemetry" (OTLP spans; the otel extra).
    trace_mode: str = "triton"
    #: ``--trace-config opentelemetry,<setting>=<value>`` pairs (url, resource, bsp_*),
    #: checked by :meth:`otel_settings`.
    trace_opentelemetry: tuple[tuple[str, str], ...] = ()
    #: Server processes sharing the ports (``--workers``; see :mod:`forwardpass.cluster`).
    #: More than one makes each bind its sockets with SO_REUSEPORT.
    workers: int = 1
    #: ONNX Runtime intra-op threads of a model whose config does not set
    #: ``intra_op_thread_count``; 0 keeps ORT's default (one per core). ``--workers N`` with
    #: N > 1 makes it 1, so that N workers do not each start a thread per core.
    intra_op_threads: int = 0

    @property
    def grpc_message_limit(self) -> int:
        """The effective gRPC message limit (``max_grpc_message_bytes`` or the HTTP body limit)."""
        return self.max_grpc_message_bytes or self.max_request_bytes

    def __post_init__(self) -> None:
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise InvalidArgument(
                f"model control mode {self.model_control_mode!r} is not one of "
                + ", ".join(MODEL_CONTROL_MODES)
            )
        if self.load_models and self.model_control_mode != "explicit":
            raise InvalidArgument(
                "loading named models at start (--load-model) requires "
                "--model-control-mode=explicit"
            )
        if "*" in self.load_models and len(self.load_models) > 1:
            raise InvalidArgument("--load-model=* must be the only --load-model")
        if self.allow_model_upload and self.model_control_mode != "explicit":
            raise InvalidArgument(
                "--allow-model-upload is honoured only with --model-control-mode=explicit"
            )
        if self.model_control_mode == "poll" and not self.repository_poll_secs > 0:
            raise InvalidArgument("--repository-poll-secs must be positive in poll mode")
        if self.workers < 1:
            raise InvalidArgument(f"workers must be at least 1, got {self.workers}")
        if self.intra_op_threads < 0:
            raise InvalidArgument(
                f"intra_op_threads must be 0 (ORT's default) or more, got {self.intra_op_threads}"
            )
        if not 0.0 <= self.monitor_payload_sample <= 1.0:
            raise InvalidArgument(
                f"--monitor-payload-sample must be in [0, 1], got {self.monitor_payload_sample}"
            )
        if self.monitor_queue_size < 1 or self.request_log_max_bytes < 1:
            raise InvalidArgument("monitor queue size and request log size must be positive")
        if not self.request_log_max_age_s > 0:
            raise InvalidArgument("--request-log-max-age-s must be positive")
        if self.api_key_header != self.api_key_header.strip().lower() or not self.api_key_header:
            raise InvalidArgument(
                f"api key header {self.api_key_header!r} must be a lower-case header name"
            )
        if self.processing_workers < 0:
            raise InvalidArgument(
                f"--processing-workers must be 0 or more (or auto), got {self.processing_workers}"
            )
        _cpu_list(self.processing_cpus)  # a bad list fails at start-up, not at first use

    @property
    def processing_cpu_list(self) -> tuple[int, ...]:
        """``processing_cpus`` as core numbers (empty: not pinned)."""
        return _cpu_list(self.processing_cpus)

    @property
    def loads_all(self) -> bool:
        """Whether start-up loads every model of the repository."""
        return self.model_control_mode != "explicit" or self.load_models == ("*",)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then ``FORWARDPASS_*`` variables, then explicit ``overrides`` (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        defaults = cls()
        hints = get_type_hints(cls)
        for f in fields(cls):
            key = "FORWARDPASS_" + f.name.upper()
            if key in env:
                default = getattr(defaults, f.name)
                if default is None and Path in get_args(hints[f.name]):
                    default = Path()  # an optional path: coerce like a path
                values[f.name] = _coerce(f.name, env[key], default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    def trace_settings(self) -> TraceSettings:
        """The start-up trace settings, checked as the trace extension checks an update."""
        from forwardpass.monitor.trace import (
            TraceSettings,
            check_trace_settings,
            parse_trace_update,
        )

        update = parse_trace_update(
            {
                "trace_level": list(self.trace_level) or ["OFF"],
                "trace_rate": self.trace_rate,
                "trace_count": self.trace_count,
                "log_frequency": self.trace_log_frequency,
                "trace_mode": self.trace_mode,
            }
        )
        settings = TraceSettings(file=self.trace_file, **update)
        check_trace_settings(settings)
        return settings

    def otel_settings(self) -> OtelSettings:
        """The OpenTelemetry exporter's settings (Triton's names and defaults)."""
        from forwardpass.monitor.otel import OtelSettings

        return OtelSettings.parse(self.trace_opentelemetry)

    def log_settings(self) -> LogSettings:
        """The start-up log settings: ``log_level`` mapped to Triton's switches."""
        from forwardpass.monitor.logsettings import FORMATS, LogSettings

        if self.log_format not in FORMATS:
            raise InvalidArgument(f"invalid argument for --log-format, got: {self.log_format}")
        return LogSettings.from_level(
            self.log_level, log_file=self.log_file, log_format=self.log_format
        )


def _cpu_list(text: str) -> tuple[int, ...]:
    """``"1"``, ``"0,2"``, ``"2-5,7"`` → core numbers; each must exist on this machine."""
    cores: list[int] = []
    count = os.cpu_count() or 1
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise InvalidArgument(
                f"--processing-cpus {text!r}: {part!r} is not a core number or range"
            ) from None
        if not 0 <= first <= last < count:
            raise InvalidArgument(
                f"--processing-cpus {text!r}: {part!r} is not among this machine's cores "
                f"0-{count - 1}"
            )
        cores.extend(c for c in range(first, last + 1) if c not in cores)
    return tuple(cores)


def _coerce(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, tuple):
            # A restricted-API spec holds commas itself: those lists are ';'-separated.
            sep = ";" if name.endswith(("restricted_api", "restricted_protocol")) else ","
            return tuple(x for x in raw.split(sep) if x)
        return raw
    except ValueError:
        raise InvalidArgument(f"FORWARDPASS_{name.upper()}={raw!r} is not a valid value") from None
