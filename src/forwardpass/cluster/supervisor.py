"""``forwardpass serve --workers N``: N worker processes behind the same two ports.

The supervisor binds nothing it serves: it reserves the HTTP and gRPC ports (a bound socket
with SO_REUSEPORT that never listens, so port 0 becomes one concrete port and nobody else takes
it while a worker restarts), spawns the workers, restarts one that dies, and on SIGTERM/SIGINT
tells every worker to drain. Each worker binds both ports with SO_REUSEPORT, and the kernel
spreads the incoming connections over them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from forwardpass.config import ServerConfig
from forwardpass.errors import InvalidArgument, Unavailable

__all__ = ["parse_workers", "run_workers", "usable_cores"]

log = logging.getLogger("forwardpass.cluster")

#: A worker that lived less than this many seconds died "at once": its restarts back off.
_QUICK_DEATH_S = 5.0
_MAX_BACKOFF_S = 10.0


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def parse_workers(value: str) -> int:
    """``--workers``: ``auto`` (the usable cores) or 1 … usable cores."""
    cores = usable_cores()
    if value.strip().lower() == "auto":
        return cores
    try:
        count = int(value)
    except ValueError:
        raise InvalidArgument(f"expected a number of workers or 'auto', got {value!r}") from None
    if count < 1:
        raise InvalidArgument(f"must be at least 1, got {count}")
    if count > cores:
        raise InvalidArgument(
            f"{count} workers but only {cores} usable core(s): at most {cores} "
            "(or 'auto'); more processes than cores only contend for them"
        )
    return count


def _reserve(host: str, port: int, flag: str) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, never listening: it holds the port
    for the workers (and picks one for port 0). A port someone else holds fails here."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise Unavailable(f"cannot listen on {host}:{port}: {exc}; check --host") from None
    try:
        if port:
            # Without SO_REUSEPORT first: a port another server listens on, even one that
            # shares it (another forwardpass --workers), is in use, never silently joined.
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise Unavailable(
                f"port {port} on {host} is already in use; choose another with {flag} "
                "(0 picks a free one)"
            ) from None
        raise Unavailable(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and {flag}"
        ) from None
    return sock


@dataclass(slots=True)
class _Worker:
    """One worker slot: its current process, the pipe it reports on, its restarts."""

    index: int
    process: BaseProcess | None = None
    pipe: Connection | None = None
    started: float = 0.0
    ready: bool = False
    quick_deaths: int = 0
    restart_at: float | None = None
    fail_message: str = ""
    ports: tuple[int, int | None] | None = None


class Supervisor:
    """Starts, watches, restarts and stops the worker processes of one server."""

    def __init__(self, config: ServerConfig, folder: str) -> None:
        self.config = config
        self.folder = folder
        self.context = multiprocessing.get_context("spawn")
        self.workers = [_Worker(i) for i in range(config.workers)]
        self.signals: list[int] = []
        self.stopping = False

    def _spawn(self, worker: _Worker) -> None:
        from forwardpass.cluster.worker import worker_main

        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=worker_main,
            args=(self.config, worker.index, len(self.workers), self.folder, send),
            name=f"forwardpass-worker-{worker.index}",
        )
        process.start()
        send.close()
        worker.process, worker.pipe = process, receive
        worker.started, worker.ready, worker.restart_at = time.monotonic(), False, None

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def run(self, on_ready: Callable[[int, int | None], None]) -> None:
        """Serve until a signal: every worker up first, or none (the first failure raises)."""
        began = time.perf_counter()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        for worker in self.workers:
            self._spawn(worker)
        ports: tuple[int, int | None] | None = None
        try:
            while not all(w.ready for w in self.workers):
                if self.signals:
                    raise Unavailable("interrupted while the workers were starting")
                self._step(starting=True)
                if ports is None:
                    ports = next((w.ports for w in self.workers if w.ready), None)
        except BaseException:
            self._stop_all(grace_s=0.0)
            raise
        assert ports is not None
        log.info(
            "forwardpass ready in %.2fs: %d workers (pids %s)",
            time.perf_counter() - began,
            len(self.workers),
            ", ".join(str(w.process.pid) for w in self.workers if w.process),
        )
        on_ready(*ports)
        while not self.signals:
            self._step(starting=False)
        log.info("shutting down: every worker finishes its in-flight requests")
        self._stop_all(grace_s=self.config.shutdown_grace_s + 5.0)
        log.info("stopped")

    def _step(self, starting: bool) -> None:
        """Wait a little for a worker's message or death; handle it."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now:
                self._spawn(worker)
        waits: list[Any] = []
        for worker in self.workers:
            if worker.process is not None:
                waits.append(worker.process.sentinel)
            if worker.pipe is not None:
                waits.append(worker.pipe)
        for ready in wait(waits, timeout=0.2):
            for worker in self.workers:
                if ready is worker.pipe:
                    self._message(worker)
                elif worker.process is not None and ready == worker.process.sentinel:
                    self._died(worker, starting)

    def _message(self, worker: _Worker) -> None:
        assert worker.pipe is not None
        try:
            message = worker.pipe.recv()
        except (EOFError, OSError):
            worker.pipe.close()
            worker.pipe = None
            return
        if message[0] == "ready":
            worker.ready = True
            worker.ports = (message[1], message[2])
            if worker.quick_deaths:
                log.info("worker %d is serving again (pid %s)", worker.index, worker.process.pid)  # type: ignore[union-attr]
        elif message[0] == "failed":
            worker.fail_message = message[1]

    def _died(self, worker: _Worker, starting: bool) -> None:
        assert worker.process is not None
        worker.process.join()
        code = worker.process.exitcode
        pid = worker.process.pid
        worker.process = None
        if worker.pipe is not None:
            while worker.pipe.poll():  # a "failed" message sent just before exiting
                self._message(worker)
                if worker.pipe is None:
                    break
            if worker.pipe is not None:
                worker.pipe.close()
                worker.pipe = None
        if starting and not worker.ready:
            raise Unavailable(
                worker.fail_message or f"worker {worker.index} exited with code {code} at start"
            )
        worker.ready = False
        lived = time.monotonic() - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived < _QUICK_DEATH_S else 1
        delay = (
            0.0
            if worker.quick_deaths <= 1
            else min(_MAX_BACKOFF_S, 0.5 * 2 ** (worker.quick_deaths - 2))
        )
        how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
        log.warning(
            "worker %d (pid %s) exited with %s%s: restarting%s; the others keep serving",
            worker.index,
            pid,
            how,
            f" ({worker.fail_message})" if worker.fail_message else "",
            f" in {delay:.1f}s" if delay else "",
        )
        worker.fail_message = ""
        worker.restart_at = time.monotonic() + delay

    def _stop_all(self, grace_s: float) -> None:
        """SIGTERM every worker (each drains its requests); SIGKILL those still alive after
        ``grace_s`` or at a second signal."""
        count = len(self.signals)
        alive = [w.process for w in self.workers if w.process is not None and w.process.is_alive()]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + grace_s
        while alive:
            if len(self.signals) > count and count:
                log.warning("second signal: stopping the workers now")
                break
            if time.monotonic() > deadline:
                log.warning("worker(s) still running after %.1fs: killing them", grace_s)
                break
            wait([p.sentinel for p in alive], timeout=0.2)
            alive = [p for p in alive if p.is_alive()]
        for process in alive:
            process.kill()
        for process in alive:
            process.join()


def run_workers(config: ServerConfig, on_ready: Callable[[int, int | None], None]) -> None:
    """Serve ``config`` with ``config.workers`` processes until SIGINT/SIGTERM.

    ``on_ready(http_port, grpc_port)`` once every worker listens. A worker that cannot start
    (a bad TLS file, a port) raises its :class:`~forwardpass.errors.ForwardpassError`.
    """
    from forwardpass.monitor.logsettings import LogControl

    LogControl(config.log_settings())
    http = _reserve(config.host, config.http_port, "--http-port")
    grpc = _reserve(config.host, config.grpc_port, "--grpc-port") if config.grpc else None
    folder = tempfile.mkdtemp(prefix="forwardpass-workers-")  # mode 0700: this user only
    try:
        config = replace(
            config,
            http_port=http.getsockname()[1],
            grpc_port=grpc.getsockname()[1] if grpc is not None else config.grpc_port,
            # One ORT thread per worker unless told otherwise: N workers, N cores.
            intra_op_threads=config.intra_op_threads or 1,
        )
        Supervisor(config, folder).run(on_ready)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        http.close()
        if grpc is not None:
            grpc.close()
