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
from typing import Any

from forwardpass.errors import InvalidArgument

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
    #: Largest request body accepted, in bytes; larger ones get a 413 before being read whole.
    max_request_bytes: int = 64 * 1024 * 1024
    #: Queue bound per model when its config says max_queue_size 0 (Triton's "unbounded").
    default_max_queue_size: int = 4096
    #: Seconds an idle keep-alive connection stays open (0 keeps it until the client closes).
    keep_alive_s: float = 60.0
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
    log_level: str = "INFO"

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
        if self.api_key_header != self.api_key_header.strip().lower() or not self.api_key_header:
            raise InvalidArgument(
                f"api key header {self.api_key_header!r} must be a lower-case header name"
            )

    @property
    def loads_all(self) -> bool:
        """Whether start-up loads every model of the repository."""
        return self.model_control_mode != "explicit" or self.load_models == ("*",)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then ``FORWARDPASS_*`` variables, then explicit ``overrides`` (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = "FORWARDPASS_" + f.name.upper()
            if key in env:
                values[f.name] = _coerce(f.name, env[key], getattr(cls(), f.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


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
