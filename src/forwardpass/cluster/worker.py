"""The body of one worker process of ``forwardpass serve --workers N``."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from forwardpass.config import ServerConfig

__all__ = ["worker_main"]


def _die_with_parent() -> None:
    """Linux: end this worker (SIGTERM: it drains) if the supervisor dies without telling it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(
    config: ServerConfig, index: int, count: int, folder: str, ready: Connection
) -> None:
    """Serve ``config`` as worker ``index`` of ``count``; tell ``ready`` the ports once listening.

    Runs in a freshly spawned interpreter (not a fork: the supervisor's state stays out).
    """
    from forwardpass.cluster.peers import Peers
    from forwardpass.errors import ForwardpassError
    from forwardpass.serving import run_server

    _die_with_parent()
    # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which then
    # tells each worker once to drain (a second signal would make a worker exit at once).
    os.setpgrp()

    def on_ready(port: int, grpc_port: int | None) -> None:
        ready.send(("ready", port, grpc_port))

    try:
        run_server(config, on_ready=on_ready, peers=Peers(index, count, Path(folder)))
    except ForwardpassError as exc:
        ready.send(("failed", exc.message))
        sys.exit(1)
