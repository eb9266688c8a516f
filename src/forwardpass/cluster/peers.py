"""A worker's channel to its siblings: a control socket per worker, and the journal of the
changes that apply to all of them.

Each worker listens on ``<run folder>/worker-<index>.sock`` (a private folder the supervisor
made, mode 0700). A worker that gets a cluster-wide request on the public ports does it
itself first (so a bad request fails exactly as on a single process and goes no further),
then asks each sibling over its socket: statistics and metrics are gathered and summed,
changes (load, unload, trace and log settings, system shared memory registrations) are applied
and recorded in the journal. A
restarted worker replays a sibling's journal before it listens, so it serves the same models
with the same settings as the others. A sibling whose socket does not answer is down (being
restarted) and skipped: it will replay the journal. Messages are small dataclasses pickled over
a socket only this user can open; tensors never cross it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forwardpass import errors
from forwardpass.errors import ForwardpassError, Unavailable

if TYPE_CHECKING:
    from forwardpass.engine import Engine
    from forwardpass.monitor.logsettings import LogControl
    from forwardpass.protocol.shared_memory import SharedMemoryRegistry
    from forwardpass.results import ModelStatistics

__all__ = ["Call", "Peers", "Reply"]

log = logging.getLogger("forwardpass.cluster")

#: Seconds a sibling may take over one control call; a model load may take long.
CALL_TIMEOUT_S = 600.0
_HEADER = struct.Struct("!Q")
#: Journal operations; load and unload of a model replace that model's earlier entries, and
#: the journal keeps the shared memory regions registered now (an unregister removes them).
_CHANGES = ("load", "unload", "trace", "log", "shm_register", "shm_unregister")


@dataclass(frozen=True, slots=True)
class Call:
    """One control request: an operation and its arguments."""

    op: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """A control answer: a value, or the error's class name and message."""

    value: Any = None
    error: str = ""
    message: str = ""

    def unwrap(self) -> Any:
        if not self.error:
            return self.value
        cls = getattr(errors, self.error, None)
        if not (isinstance(cls, type) and issubclass(cls, ForwardpassError)):
            cls = errors.InternalError
        raise cls(self.message)


class PeerDown(Exception):
    """The sibling's control socket does not answer (it is starting or restarting)."""


async def _send(writer: asyncio.StreamWriter, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


class Peers:
    """Worker ``index`` of ``count``: serves its control socket and calls its siblings'."""

    def __init__(self, index: int, count: int, folder: Path) -> None:
        self.index = index
        self.count = count
        self.folder = folder
        self.journal: list[Call] = []
        self._server: asyncio.AbstractServer | None = None
        self._engine: Engine | None = None
        self._logs: LogControl | None = None
        self._metrics: Callable[[], bytes] | None = None
        #: This worker's system shared memory registry (``--allow-client-shm``), else None.
        self.shared_memory: SharedMemoryRegistry | None = None

    def path(self, index: int) -> Path:
        return self.folder / f"worker-{index}.sock"

    @property
    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    # ------------------------------------------------------------------ lifecycle
    async def start(
        self, engine: Engine, logs: LogControl | None, metrics: Callable[[], bytes] | None
    ) -> None:
        """Listen on this worker's socket, then catch up with a sibling's journal."""
        self._engine, self._logs, self._metrics = engine, logs, metrics
        path = self.path(self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this worker's previous life
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)
        for sibling in self.siblings:
            try:
                journal = (await self._call(sibling, Call("journal"))).unwrap()
            except (PeerDown, ForwardpassError):
                continue
            for call in journal:
                try:
                    await self._execute(call)
                except ForwardpassError as exc:
                    log.error("worker %d: replaying %s failed: %s", self.index, call.op, exc)
            if journal:
                log.info(
                    "worker %d: replayed %d change(s) of worker %d",
                    self.index,
                    len(journal),
                    sibling,
                )
            break

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path(self.index).unlink()

    # ------------------------------------------------------------------ serving siblings
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    call = await _receive(reader)
                except asyncio.IncompleteReadError:
                    return
                try:
                    reply = Reply(await self._execute(call))
                except ForwardpassError as exc:
                    reply = Reply(error=type(exc).__name__, message=exc.message)
                except Exception as exc:  # a bug: report it, keep the socket serving
                    log.exception("worker %d: control call %s failed", self.index, call.op)
                    reply = Reply(error="InternalError", message=f"{type(exc).__name__}: {exc}")
                await _send(writer, reply)
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    async def _execute(self, call: Call) -> Any:
        """Do ``call`` on this worker only."""
        engine = self._engine
        assert engine is not None
        op, args = call.op, call.args
        if op == "stats":
            return engine.stats(*args)
        if op == "metrics":
            return (os.getpid(), self._metrics() if self._metrics is not None else b"")
        if op == "journal":
            return list(self.journal)
        if op == "feedback":  # ground truth for predictions this worker may have made
            loop = asyncio.get_running_loop()
            model, items = args
            return await loop.run_in_executor(
                None, lambda: engine.monitoring.feedback(model, items, partial=True)
            )
        if op == "load":
            await engine.table.load(*args)
        elif op == "unload":
            await engine.table.unload(*args)
        elif op == "trace":
            engine.tracer.update(*args)
        elif op == "log":
            if self._logs is None:
                raise Unavailable("the server does not support dynamic logging")
            self._logs.update(*args)
        elif op in ("shm_register", "shm_unregister"):
            if self.shared_memory is None:
                raise Unavailable(f"worker {self.index} has client shared memory disabled")
            if op == "shm_register":
                self.shared_memory.register(*args)
            else:
                self.shared_memory.unregister(*args)
        else:
            raise errors.InvalidArgument(f"unknown control operation {op!r}")
        self.record(call)
        return None

    def record(self, call: Call) -> None:
        """Add a change to the journal (a model's load/unload replaces its earlier ones; an
        unregister removes the region's registration, or every one, and is not kept)."""
        if call.op == "shm_unregister":
            name = call.args[0] if call.args else ""
            self.journal = [
                c
                for c in self.journal
                if not (c.op == "shm_register" and (not name or c.args[0] == name))
            ]
            return
        if call.op in ("load", "unload"):
            name = call.args[0]
            self.journal = [
                c for c in self.journal if not (c.op in ("load", "unload") and c.args[0] == name)
            ]
        self.journal.append(call)

    # ------------------------------------------------------------------ calling siblings
    async def _call(self, index: int, call: Call) -> Reply:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path(index)))
        except OSError as exc:
            raise PeerDown(str(exc)) from None
        try:
            await _send(writer, call)
            reply: Reply = await asyncio.wait_for(_receive(reader), CALL_TIMEOUT_S)
            return reply
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise PeerDown(str(exc)) from None
        except TimeoutError:
            return Reply(error="Unavailable", message=f"no answer in {CALL_TIMEOUT_S:.0f}s")
        finally:
            writer.close()

    async def ask(self, call: Call) -> dict[int, Reply]:
        """``call`` on every sibling at once; the replies of those that answered, by index."""

        async def one(index: int) -> tuple[int, Reply | None]:
            try:
                return index, await self._call(index, call)
            except PeerDown as exc:
                log.warning("worker %d is not answering (%s): skipped", index, exc)
                return index, None

        answers = await asyncio.gather(*(one(i) for i in self.siblings))
        return {i: r for i, r in answers if r is not None}

    async def statistics(
        self, local: list[ModelStatistics], name: str, version: str
    ) -> list[ModelStatistics]:
        """``local`` summed with every sibling's statistics of the same model(s)."""
        from forwardpass.cluster.merge import merge_statistics

        per_worker = [local]
        for index, reply in sorted((await self.ask(Call("stats", (name, version)))).items()):
            try:
                per_worker.append(reply.unwrap())
            except ForwardpassError as exc:  # e.g. still loading the model: left out
                log.warning("worker %d statistics left out: %s", index, exc.message)
        return merge_statistics(per_worker)

    async def metrics(self) -> bytes:
        """The Prometheus exposition of every worker answering, summed."""
        from forwardpass.cluster.merge import merge_metrics

        assert self._metrics is not None
        # Rendered on the loop, as a single process renders it (the collector reads the model
        # table, which only the loop changes); the merge parses text, so it runs off the loop.
        per_worker = [(self.index, os.getpid(), self._metrics())]
        for index, reply in sorted((await self.ask(Call("metrics"))).items()):
            with contextlib.suppress(ForwardpassError):
                pid, text = reply.unwrap()
                per_worker.append((index, pid, text))
        return await asyncio.get_running_loop().run_in_executor(None, merge_metrics, per_worker)

    async def share(self, call: Call) -> None:
        """A change this worker has just made: record it and make it on every sibling.

        A sibling that refuses it leaves the workers differing: that is reported as an error
        naming the workers, never passed over.
        """
        self.record(call)
        failed = self._failures(await self.ask(call))
        if failed:
            raise Unavailable(
                f"{call.op} applied on worker {self.index} but failed on {failed}; "
                "the workers now differ"
            )

    async def share_load(
        self,
        name: str,
        config_override: Mapping[str, Any] | None,
        files: Mapping[str, bytes] | None,
        was_serving: bool,
    ) -> None:
        """This worker has just loaded ``name``: load it on every sibling, all or none.

        If a sibling fails a first load, the model is unloaded again from every worker that
        loaded it and the load fails; a failed reload cannot be undone (the old version is
        gone), so it is reported naming the workers that kept the old one.
        """
        engine = self._engine
        assert engine is not None
        call = Call("load", (name, config_override, files))
        self.record(call)
        replies = await self.ask(call)
        failed = self._failures(replies)
        if not failed:
            return
        first = next(r for r in replies.values() if r.error)
        cls = getattr(errors, first.error, errors.InternalError)
        if was_serving:
            raise cls(
                f"model {name!r}: reload failed on {failed} (it serves the previous version "
                f"there; the other workers serve the new one)"
            )
        loaded = [i for i, r in replies.items() if not r.error]
        unload = Call("unload", (name,))
        with contextlib.suppress(ForwardpassError):
            await engine.table.unload(name)
        self.record(unload)
        for index in loaded:
            with contextlib.suppress(PeerDown, ForwardpassError):
                (await self._call(index, unload)).unwrap()
        raise cls(f"model {name!r} was loaded by no worker: failed on {failed}")

    async def share_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """This worker has just registered region ``name``: register it on every sibling,
        all or none (:class:`~forwardpass.protocol.shared_memory.RegionCluster`).

        If a sibling refuses (the key does not open there, or it already has a region of
        that name), the siblings that registered it unregister it again, the journal forgets
        it, and the first refusal's error is raised; the caller unregisters it here.
        """
        call = Call("shm_register", (name, key, offset, byte_size))
        self.record(call)
        replies = await self.ask(call)
        failed = self._failures(replies)
        if not failed:
            return
        undo = Call("shm_unregister", (name,))
        self.record(undo)
        for index in (i for i, r in replies.items() if not r.error):
            with contextlib.suppress(PeerDown, ForwardpassError):
                (await self._call(index, undo)).unwrap()
        first = next(r for _, r in sorted(replies.items()) if r.error)
        message = f"shared memory region '{name}' was registered by no worker: failed on {failed}"
        Reply(error=first.error, message=message).unwrap()  # raises the sibling's error class

    async def share_unregister(self, name: str) -> None:
        """This worker has just unregistered ``name`` (every region when empty): so do all."""
        await self.share(Call("shm_unregister", (name,)))

    @staticmethod
    def _failures(replies: dict[int, Reply]) -> str:
        return "; ".join(f"worker {i}: {r.message}" for i, r in sorted(replies.items()) if r.error)
