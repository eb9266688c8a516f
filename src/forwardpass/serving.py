"""Wires the pieces into a running server: repository → engine → HTTP app and gRPC service →
sockets, both protocols on one event loop in one process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from forwardpass.access import AccessPolicy
from forwardpass.config import ServerConfig
from forwardpass.engine import Engine
from forwardpass.errors import Unsupported
from forwardpass.monitor.logsettings import LogControl
from forwardpass.monitor.metrics import metrics_renderer
from forwardpass.protocol.http import HttpApp
from forwardpass.protocol.server import HttpServer
from forwardpass.protocol.shared_memory import SharedMemoryRegistry
from forwardpass.repository import ModelRepository

if TYPE_CHECKING:
    from forwardpass.cluster.peers import Peers
    from forwardpass.protocol.grpc_service import GrpcServer

__all__ = ["Server", "run_server"]

log = logging.getLogger("forwardpass")


class Server:
    """One forwardpass server: start it, it serves until :meth:`stop`."""

    def __init__(
        self, config: ServerConfig, logs: LogControl | None = None, peers: Peers | None = None
    ) -> None:
        self.config = config
        self.engine = Engine(ModelRepository(config.model_repository), config)
        self.engine.peers = self.peers = peers
        if peers is not None and peers.count > 1:
            self.engine.monitoring.drift.worker = peers.index  # its own drift state file
        self.logs = logs
        self._local_metrics = metrics_renderer(self.engine) if config.metrics else None
        metrics: Callable[[], bytes | Awaitable[bytes]] | None = self._local_metrics
        if peers is not None and metrics is not None:
            metrics = peers.metrics  # this worker's and its siblings', summed
        self.shared_memory = SharedMemoryRegistry() if config.allow_client_shm else None
        if peers is not None and self.shared_memory is not None:
            # Registrations apply to every worker and are journaled for restarted ones.
            peers.shared_memory, self.shared_memory.cluster = self.shared_memory, peers
        self.app = HttpApp(
            self.engine,
            metrics,
            config.max_request_bytes,
            logs,
            shared_memory=self.shared_memory,
            access=AccessPolicy.from_config(config),
            dashboard=config.dashboard,
        )
        self.http = HttpServer(self.app, config)
        self.grpc: GrpcServer | None = None
        if config.grpc:
            # grpcio is an extra, imported only when gRPC is served.
            try:
                from forwardpass.protocol.grpc_service import GrpcServer
            except ImportError as exc:
                raise Unsupported(
                    f"serving gRPC needs the grpc extra (pip install 'forwardpass[grpc]'): "
                    f"{exc}; or turn gRPC off with --no-grpc"
                ) from None

            self.grpc = GrpcServer(self.engine, config, self.shared_memory, logs)
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Load the models, then listen. Returns the bound HTTP port (``grpc.port`` is gRPC's)."""
        await self.engine.start()
        try:
            if self.peers is not None:  # catch up with the siblings before listening
                await self.peers.start(self.engine, self.logs, self._local_metrics)
            port = await self.http.start()
            if self.grpc is not None:
                try:
                    await self.grpc.start()
                except BaseException:
                    await self.http.stop(0)
                    raise
        except BaseException:
            # A busy port or a bad TLS file: release the models so the process can exit.
            if self.peers is not None:
                await self.peers.stop()
            await self.engine.stop()
            raise
        return port

    async def stop(self) -> None:
        """Finish in-flight requests on both protocols, then release the models."""
        if self._stopped.is_set():
            return
        grace = self.config.shutdown_grace_s
        stops = [self.http.stop(grace)]
        if self.grpc is not None:
            stops.append(self.grpc.stop(grace))
        await asyncio.gather(*stops)
        if self.peers is not None:
            await self.peers.stop()
        await self.engine.stop()
        if self.shared_memory is not None:
            self.shared_memory.unregister()  # unmap every region the clients left registered
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


def run_server(
    config: ServerConfig,
    on_ready: Callable[[int, int | None], None] | None = None,
    peers: Peers | None = None,
) -> None:
    """Run until SIGINT/SIGTERM; the first signal drains in-flight requests, a second exits.

    ``on_ready(http_port, grpc_port)`` is called once both listen (``grpc_port`` is ``None``
    when gRPC is off). A port that cannot be bound or a TLS file that cannot be loaded raises a
    :class:`~forwardpass.errors.ForwardpassError` naming it. ``peers``: this process is one
    of ``serve --workers N`` (see :mod:`forwardpass.cluster`).
    """
    # Other libraries' records go to stderr through the root logger; forwardpass's own go
    # through the LogControl, which the logging extension changes at run time.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logs = LogControl(config.log_settings())
    log.info("effective configuration: %s", _printable(config))
    _install_loop()

    async def main() -> None:
        began = time.perf_counter()
        server = Server(config, logs, peers)
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
        grpc_port = server.grpc.port if server.grpc is not None else None
        log.info(
            "forwardpass ready in %.2fs: %s://%s:%d, grpc %s (models: %s)",
            time.perf_counter() - began,
            server.http.scheme,
            config.host,
            port,
            f"{config.host}:{grpc_port}" if grpc_port is not None else "off",
            ", ".join(ready) or "none",
        )
        if on_ready is not None:
            on_ready(port, grpc_port)
        await server.wait_stopped()
        log.info("stopped")

    asyncio.run(main())
