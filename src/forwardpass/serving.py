"""Wires the pieces into a running server: repository → engine → HTTP app → socket."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from forwardpass.access import AccessPolicy
from forwardpass.config import ServerConfig
from forwardpass.engine import Engine
from forwardpass.monitor.metrics import metrics_renderer
from forwardpass.protocol.http import HttpApp
from forwardpass.protocol.server import HttpServer
from forwardpass.repository import ModelRepository

__all__ = ["Server", "run_server"]

log = logging.getLogger("forwardpass")


class Server:
    """One forwardpass server: start it, it serves until :meth:`stop`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine = Engine(ModelRepository(config.model_repository), config)
        metrics = metrics_renderer(self.engine) if config.metrics else None
        self.app = HttpApp(
            self.engine, metrics, config.max_request_bytes, AccessPolicy.from_config(config)
        )
        self.http = HttpServer(
            self.app, config.host, config.http_port, config.max_request_bytes, config.keep_alive_s
        )
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Load the models, then listen. Returns the bound HTTP port."""
        await self.engine.start()
        return await self.http.start()

    async def stop(self) -> None:
        """Finish in-flight requests, then release the models."""
        if self._stopped.is_set():
            return
        await self.http.stop(self.config.shutdown_grace_s)
        await self.engine.stop()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _printable(config: ServerConfig) -> dict[str, str]:
    """The configuration to log, its secrets masked (the API key, restricted-API values)."""
    shown = {k: str(v) for k, v in asdict(config).items()}
    if config.api_key:
        shown["api_key"] = "***"
    for key in ("http_restricted_api", "grpc_restricted_protocol"):
        specs = getattr(config, key)
        shown[key] = str(tuple(s.partition("=")[0] + "=***" for s in specs))
    return shown


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency off Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_server(config: ServerConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM; the first signal drains in-flight requests, a second exits."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info("effective configuration: %s", _printable(config))
    _install_loop()

    async def main() -> None:
        began = time.perf_counter()
        server = Server(config)
        port = await server.start()
        loop = asyncio.get_running_loop()
        stopping = False
        stopping_tasks: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            nonlocal stopping
            if stopping:
                log.warning("second signal: exiting now")
                # Not sys.exit: its clean-up joins the worker threads, so a batch still
                # running would hold the process for as long as the batch takes.
                logging.shutdown()
                os._exit(1)
            stopping = True
            log.info("shutting down: finishing in-flight requests")
            # The loop keeps only a weak reference to a task: hold this one until it is done.
            stopping_tasks.append(loop.create_task(server.stop()))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        ready = [h.name for h in server.engine.models() if h.state.value == "READY"]
        log.info(
            "forwardpass ready in %.2fs: http://%s:%d (models: %s)",
            time.perf_counter() - began,
            config.host,
            port,
            ", ".join(ready) or "none",
        )
        if on_ready is not None:
            on_ready(port)
        await server.wait_stopped()
        log.info("stopped")

    asyncio.run(main())
