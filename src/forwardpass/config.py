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

__all__ = ["DEFAULT_REPOSITORY", "ServerConfig"]

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
    #: Load every model found at start-up (Triton's --model-control-mode=none/poll); when false
    #: only ``load_models`` are loaded and the rest wait for a repository load request.
    load_all: bool = True
    load_models: tuple[str, ...] = ()
    #: Serve Prometheus metrics at /metrics.
    metrics: bool = True
    #: Let clients register system shared memory regions and pass tensors through them
    #: (Triton's --allow-client-shm). Off by default, as in Triton: a client that can register
    #: a region makes the server read and write memory of this host.
    allow_client_shm: bool = False
    #: Bytes of the response cache that models with ``response_cache { enable: true }`` use
    #: (Triton's ``--cache-config local,size=BYTES``); 0: no cache.
    response_cache_bytes: int = 0
    log_level: str = "INFO"

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
            return tuple(x for x in raw.split(",") if x)
        return raw
    except ValueError:
        raise InvalidArgument(f"FORWARDPASS_{name.upper()}={raw!r} is not a valid value") from None
