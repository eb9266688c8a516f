"""Declared input processing in worker processes, off the serving core.

JPEG decoding and resizing take milliseconds per image; in threads of the server process they
share its core (and its GIL) with the forward pass. A :class:`ProcessingPool` runs
:meth:`Processing.preprocess` in ``workers`` processes instead (``forwardpass serve
--processing-workers N``, or ``pool: process`` in a model's processing declaration).

How a request travels:

- Each worker is a fresh interpreter (``python -m forwardpass.processing.pool_worker``, started
  like the Python backend's stubs: fork+exec, so none of the server's threads come along, as
  with multiprocessing's ``spawn``), joined to the server by :mod:`forwardpass.runtime.ipc`: a
  Unix socket for small control messages and two shared-memory arenas for the tensors.
- A worker builds a model's :class:`Processing` once, from the model's config (sent as JSON
  with its folder and labels the first time that worker sees the model), and keeps it until the
  model is reloaded: a reload makes a new ``Processing`` in the server, which the pool sees as
  a new generation and builds again. Per request only the raw inputs the processors read (the
  JPEG bytes) go in and the model inputs come back, both through the arenas: one copy in, one
  copy out on each side, never a pickle.
- Up to :data:`DEPTH` requests are in flight per worker, so a worker never waits for the server
  to hand it the next one; the others wait in the pool's queue and go to the first worker that
  has room.

Failures: an error the processing raises on purpose (a bad JPEG: ``InvalidArgument``) comes
back as the same error class and message as in a thread, for that request only; a bug is the
same ``InternalError`` the in-thread path gives. A worker that dies fails only its in-flight
requests (a 500 naming the worker and why it ended) and is replaced; the others keep working.
A worker that cannot even start fails what is queued instead of leaving it waiting.

Pinning: ``cpus`` (``--processing-cpus``) pins the workers to those cores, whatever the
server's own affinity: ``taskset -c 0 forwardpass serve --processing-workers 1
--processing-cpus 1`` serves on core 0 and decodes on core 1.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass import errors
from forwardpass.datatypes import DataType
from forwardpass.errors import ForwardpassError, InternalError, Unavailable
from forwardpass.processing.base import Processing
from forwardpass.runtime import ipc

if TYPE_CHECKING:
    from forwardpass.repository.repository import ModelEntry

__all__ = ["DEPTH", "ProcessingPool", "auto_workers"]

log = logging.getLogger("forwardpass.processing.pool")

#: Requests in flight per worker: one being processed, one waiting in its socket.
DEPTH = 2
#: Seconds a worker gets to exit when asked before it is killed.
_EXIT_GRACE_S = 5.0


def auto_workers(cpus: tuple[int, ...] = ()) -> int:
    """``--processing-workers auto``: one per pinned core, or every usable core but one (the
    serving core), at least one."""
    if cpus:
        return len(cpus)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return max(1, usable - 1)


@dataclass(slots=True)
class _Generation:
    """One model's processing as one load built it: what a worker needs to build it too."""

    token: int
    name: str
    processing: Processing
    build: dict[str, Any]
    #: The client inputs the processors read: the only ones that travel.
    consumed: frozenset[str]


@dataclass(slots=True)
class _Job:
    generation: _Generation
    tensors: dict[str, tuple[DataType, np.ndarray]]
    future: concurrent.futures.Future[dict[str, np.ndarray]] = field(
        default_factory=concurrent.futures.Future
    )


class _Worker:
    """One worker process, its channel, its in-flight jobs and the thread that reads its replies."""

    def __init__(self, pool: ProcessingPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.inflight: collections.deque[_Job] = collections.deque()
        #: Model name → the generation token this process has built.
        self.built: dict[str, int] = {}
        self.ready = False
        self.alive = False
        self.channel: ipc.Channel
        self.proc: subprocess.Popen[bytes]
        self._spawn()
        self.reader = threading.Thread(
            target=self._read_forever, name=f"fp-processing-pool-{index}", daemon=True
        )
        self.reader.start()

    def _spawn(self) -> None:
        channel, theirs, to_worker, from_worker = ipc.channel_pair()
        argv = [
            sys.executable,
            "-m",
            "forwardpass.processing.pool_worker",
            str(theirs.fileno()),
            str(to_worker.fd),
            str(to_worker.size),
            str(from_worker.fd),
            str(from_worker.size),
            ",".join(str(c) for c in self.pool.cpus),
        ]
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=[theirs.fileno(), to_worker.fd, from_worker.fd],
                stdin=subprocess.DEVNULL,
                stdout=2,  # a processor's prints go to the server's log, never its stdout
            )
        except OSError:
            channel.close()
            to_worker.close()
            from_worker.close()
            raise
        finally:
            theirs.close()
        self.channel = channel
        self.built = {}
        self.ready = False
        self.alive = True

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ------------------------------------------------------------------ sending (pool lock held)
    def send(self, job: _Job) -> None:
        """Hand ``job`` to this worker (the caller holds the pool's lock and checked room)."""
        generation = job.generation
        self.inflight.append(job)
        try:
            if self.built.get(generation.name) != generation.token:
                self.channel.send(generation.build)
                self.built[generation.name] = generation.token
            self.channel.send(
                {"op": "run", "name": generation.name, "token": generation.token}, job.tensors
            )
        except ipc.ChannelClosed:
            # The process is gone; its reader replaces it. The job goes to another worker.
            self.inflight.remove(job)
            self.alive = False
            self.pool.requeue_locked(job)
        except ValueError as exc:  # a control message too large to send: this job only
            self.inflight.remove(job)
            _fail(job, InternalError(f"processing worker {self.pid} cannot take a request: {exc}"))

    # ------------------------------------------------------------------ the reader thread
    def _read_forever(self) -> None:
        failures = 0
        while True:
            try:
                message, tensors = self.channel.recv()
            except ipc.ChannelClosed:
                if self.pool.closing:
                    return
                failures = failures + 1 if not self.ready else 1
                if not self._replace(failures):
                    return
                continue
            if message.get("op") == "ready":
                self.ready = True
                failures = 0
                continue
            with self.pool.lock:
                job = self.inflight.popleft() if self.inflight else None
                self.pool.dispatch_locked(self)
            if job is None:  # pragma: no cover - a reply without a request is a worker bug
                log.error("processing worker %s answered a request it was not sent", self.pid)
                continue
            if "error" in message:
                _fail(job, _error(message))
            else:
                _succeed(job, tensors)

    def _replace(self, failures: int) -> bool:
        """The process ended: fail its in-flight jobs, start another. False when the pool is
        closing or workers cannot start at all (then what is queued fails too)."""
        with self.pool.lock:  # nothing is sent to it from now on
            self.alive = False
            lost = list(self.inflight)
            self.inflight.clear()
        self.channel.close()
        self.channel.out.close()
        self.channel.inp.close()
        reason = _exit_reason(self.proc)
        for job in lost:
            _fail(
                job,
                InternalError(
                    f"processing worker {self.pid} {reason} while processing this request"
                ),
            )
        if self.pool.closing:
            return False
        log.error("processing worker %s %s; starting another", self.pid, reason)
        if failures >= 3:
            # Three processes in a row ended before saying ready: starting a fourth would spin.
            self.pool.broken(f"processing workers cannot start ({reason}); see the server log")
            return False
        time.sleep(0.1 * failures)
        try:
            with self.pool.lock:
                self._spawn()
                self.pool.dispatch_locked(self)
        except OSError as exc:
            self.pool.broken(f"processing worker cannot start: {exc}")
            return False
        return True

    def stop(self) -> None:
        try:
            self.channel.send({"op": "exit"})
        except ipc.ChannelClosed:
            pass
        try:
            self.proc.wait(_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(_EXIT_GRACE_S)
        self.channel.close()
        self.channel.out.close()
        self.channel.inp.close()


class ProcessingPool:
    """Worker processes that run models' declared input processing (see the module docstring).

    Nothing starts until the first request that uses it (or :meth:`start`); ``close`` stops the
    workers. ``submit`` and ``preprocess`` may be called from any thread.
    """

    def __init__(self, workers: int, cpus: tuple[int, ...] = (), *, default: bool = False) -> None:
        if workers < 1:
            raise ValueError("a processing pool needs at least one worker")
        self.size = workers
        self.cpus = cpus
        #: Whether models that do not choose (no ``pool`` in their declaration) use the pool.
        self.default = default
        self.lock = threading.Lock()
        self.closing = False
        self._workers: list[_Worker] = []
        self._queue: collections.deque[_Job] = collections.deque()
        self._generations: dict[str, _Generation] = {}
        self._tokens = 0
        self._broken: str | None = None

    def serves(self, processing: Processing) -> bool:
        """Whether ``processing``'s inputs run here rather than in a thread."""
        return processing.pool == "process" or (self.default and processing.pool != "thread")

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (empty until the pool starts)."""
        with self.lock:
            return [w.pid for w in self._workers]

    def start(self) -> None:
        """Start the worker processes now (idempotent; they start at first use otherwise)."""
        with self.lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._workers or self.closing:
            return
        for index in range(self.size):
            self._workers.append(_Worker(self, index))
        log.info(
            "processing pool: %d worker process(es)%s",
            self.size,
            f" on cores {','.join(map(str, self.cpus))}" if self.cpus else "",
        )

    # ------------------------------------------------------------------ requests
    async def preprocess(
        self,
        entry: ModelEntry,
        processing: Processing,
        inputs: dict[str, np.ndarray],
        datatypes: Mapping[str, DataType],
    ) -> dict[str, np.ndarray]:
        """``processing.preprocess(inputs)`` of the model ``entry``, computed by a worker."""
        job = self._submit(entry, processing, inputs, datatypes)
        produced = await asyncio.wrap_future(job.future)
        kept = {k: v for k, v in inputs.items() if k not in job.generation.consumed}
        return {**kept, **produced}

    def submit(
        self,
        entry: ModelEntry,
        processing: Processing,
        inputs: Mapping[str, np.ndarray],
        datatypes: Mapping[str, DataType],
    ) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        """Queue one request's inputs; the future gives what the processors produce from the
        inputs they read (``datatypes``: each input's protocol datatype)."""
        return self._submit(entry, processing, inputs, datatypes).future

    def _submit(
        self,
        entry: ModelEntry,
        processing: Processing,
        inputs: Mapping[str, np.ndarray],
        datatypes: Mapping[str, DataType],
    ) -> _Job:
        with self.lock:
            if self.closing:
                raise Unavailable("server is shutting down")
            if self._broken is not None:
                raise InternalError(self._broken)
            generation = self._generation_locked(entry, processing)
            tensors = {n: (datatypes[n], a) for n, a in inputs.items() if n in generation.consumed}
            job = _Job(generation, tensors)
            self._start_locked()
            self._queue.append(job)
            self.dispatch_locked(None)
        return job

    def _generation_locked(self, entry: ModelEntry, processing: Processing) -> _Generation:
        current = self._generations.get(entry.name)
        if current is not None and current.processing is processing:
            return current
        # A new load of the model (or its first request here): workers build it afresh.
        self._tokens += 1
        message = {
            "op": "build",
            "name": entry.name,
            "token": self._tokens,
            **build_message(entry.config, entry.path, entry.labels),
        }
        consumed = frozenset(spec.name for p in processing.inputs for spec in p.inputs)
        generation = _Generation(self._tokens, entry.name, processing, message, consumed)
        self._generations[entry.name] = generation
        return generation

    def dispatch_locked(self, preferred: _Worker | None) -> None:
        """Move queued jobs to workers with room: ``preferred`` first, then the least busy."""
        while self._queue:
            candidates = [w for w in self._workers if w.alive and len(w.inflight) < DEPTH]
            if not candidates:
                return
            job = self._queue.popleft()
            if job.future.cancelled():  # its client went away while it waited
                continue
            if preferred is not None and preferred in candidates:
                worker = preferred
            else:
                worker = min(candidates, key=lambda w: len(w.inflight))
            worker.send(job)

    def requeue_locked(self, job: _Job) -> None:
        self._queue.appendleft(job)

    def broken(self, reason: str) -> None:
        """Workers cannot start: fail what waits and refuse new requests."""
        with self.lock:
            self._broken = reason
            waiting = list(self._queue)
            self._queue.clear()
        for job in waiting:
            _fail(job, InternalError(reason))

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Fail what is still queued, ask every worker to exit, reap them (idempotent)."""
        with self.lock:
            if self.closing:
                return
            self.closing = True
            waiting = list(self._queue)
            self._queue.clear()
            workers = list(self._workers)
        for job in waiting:
            _fail(job, Unavailable("server is shutting down"))
        for worker in workers:
            worker.stop()
        for worker in workers:
            for job in worker.inflight:
                _fail(job, Unavailable("server is shutting down"))
            worker.inflight.clear()


def _fail(job: _Job, error: ForwardpassError) -> None:
    # A request whose client went away has its future cancelled, from another thread.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        job.future.set_exception(error)


def _succeed(job: _Job, tensors: dict[str, np.ndarray]) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        job.future.set_result(tensors)


def _error(message: Mapping[str, Any]) -> ForwardpassError:
    """The worker's error, as the class it raised (only classes of the one exception tree)."""
    cls = getattr(errors, str(message.get("error")), None)
    text = str(message.get("message", ""))
    if isinstance(cls, type) and issubclass(cls, ForwardpassError):
        return cls(text)
    return InternalError(text)


def _exit_reason(proc: subprocess.Popen[bytes]) -> str:
    try:  # the channel closes a moment before the process can be reaped
        code: int | None = proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def build_message(config: Any, model_dir: Any, labels: Mapping[str, Any]) -> dict[str, Any]:
    """What a worker needs to build a model's processing: config as JSON data, folder, labels."""
    from forwardpass.repository.config_json import config_to_dict

    data = {
        "config": config_to_dict(config),
        "model_dir": str(model_dir),
        "labels": {k: list(v) for k, v in labels.items()},
    }
    json.dumps(data)  # a config that cannot travel fails here, in the server, not in a worker
    return data
