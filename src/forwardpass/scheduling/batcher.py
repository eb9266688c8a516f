"""The dynamic batcher: one per loaded model version.

Requests wait in per-priority queues. Each model instance runs a worker coroutine that takes
the next batch: the oldest request of the highest priority, plus every queued request with the
same *signature* (input names, dtypes and non-batch dimensions) until ``max_batch_size`` rows.
Requests whose other dimensions differ are never merged; they form their own batch.

When to dispatch follows Triton's dynamic batcher: with ``max_queue_delay_microseconds`` 0 a
free instance takes whatever is queued at once (so a lone request pays no waiting, and under
load batches grow by themselves while the instances are busy); with a delay, a batch is held
until it reaches a preferred size (or ``max_batch_size``) or its oldest request has waited the
delay.

Guarantees: every submitted request gets exactly one result or one error; a batch whose backend
call fails fails only its own requests, with the backend's message; a request whose queue
timeout expires is rejected (``timeout_action: REJECT``) or moved behind everything else
(``DELAY``); a full queue rejects new requests with :class:`Unavailable`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from forwardpass.errors import ForwardpassError, InternalError, RequestTimeout, Unavailable
from forwardpass.model_config import DynamicBatching, QueuePolicy
from forwardpass.runtime.base import NamedArrays

__all__ = ["BatchRecord", "Batcher", "BatcherPolicy", "Pending", "RunFn"]

log = logging.getLogger("forwardpass.scheduling")

#: Runs one merged batch on one instance, in a worker thread: (instance, inputs) -> outputs.
RunFn = Callable[[int, NamedArrays], NamedArrays]


@dataclass(frozen=True, slots=True)
class BatcherPolicy:
    """What the batcher needs from a model config, resolved to plain numbers."""

    max_batch_size: int = 0
    #: Merge requests at all (a config with ``dynamic_batching``).
    merge: bool = False
    max_queue_delay_ns: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)
    #: Bound used where a queue policy says max_queue_size 0.
    default_max_queue_size: int = 4096
    instances: int = 1

    @classmethod
    def from_config(
        cls,
        max_batch_size: int,
        dynamic: DynamicBatching | None,
        instances: int,
        default_max_queue_size: int,
    ) -> BatcherPolicy:
        if dynamic is None:
            return cls(
                max_batch_size=max_batch_size,
                instances=instances,
                default_max_queue_size=default_max_queue_size,
            )
        return cls(
            max_batch_size=max_batch_size,
            merge=max_batch_size > 0,
            max_queue_delay_ns=dynamic.max_queue_delay_microseconds * 1000,
            preferred_batch_sizes=tuple(sorted(dynamic.preferred_batch_size)),
            priority_levels=dynamic.priority_levels,
            default_priority_level=dynamic.default_priority_level,
            default_queue_policy=dynamic.default_queue_policy,
            priority_queue_policy=dict(dynamic.priority_queue_policy),
            default_max_queue_size=default_max_queue_size,
            instances=instances,
        )

    def queue_policy(self, level: int) -> QueuePolicy:
        return self.priority_queue_policy.get(level, self.default_queue_policy)


@dataclass(slots=True, eq=False)
class Pending:
    """One request waiting in the queue, with the future its caller awaits."""

    inputs: NamedArrays
    #: Rows this request adds to a batch (its leading dimension), 1 when not batching.
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[tuple[NamedArrays, int, int]]
    level: int = 0
    enqueued_ns: int = 0
    deadline_ns: int = 0
    timeout_action: str = "REJECT"
    timer: asyncio.TimerHandle | None = None
    #: When the caller asked (a traced request): the batch's monotonic-clock instants are
    #: appended here: compute start, input end (merged), output start (backend done), end.
    stamps: list[int] | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What happened to one batch, for statistics and metrics listeners."""

    batch_size: int
    requests: int
    #: Per request: nanoseconds spent queued.
    queue_ns: tuple[int, ...]
    #: Time merging inputs, running the backend, splitting outputs.
    input_ns: int
    infer_ns: int
    output_ns: int
    ok: bool


def _signature(inputs: NamedArrays, batching: bool) -> tuple[object, ...]:
    if batching:
        return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())
    return tuple((name, a.dtype.str, a.shape) for name, a in inputs.items())


class Batcher:
    """Queues requests for one model version and runs them in batches on its instances."""

    def __init__(
        self,
        run: RunFn,
        policy: BatcherPolicy,
        executor: Executor,
        listener: Callable[[BatchRecord], None] | None = None,
        name: str = "",
    ) -> None:
        self.run = run
        self.policy = policy
        self.executor = executor
        self.listener = listener
        self.name = name
        levels = max(1, policy.priority_levels)
        # Index 0 is priority level 1 (highest); a final extra queue holds DELAYed requests.
        self._queues: list[collections.deque[Pending]] = [
            collections.deque() for _ in range(levels + 1)
        ]
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._closed = False
        self._idle: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers = [
            loop.create_task(self._worker(i), name=f"batcher-{self.name}-{i}")
            for i in range(self.policy.instances)
        ]

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return self._queued + self._running

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let queued and running ones finish (up to ``grace_s``)."""
        self._closed = True
        if self._idle is not None and self.pending:
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning(
                    "%s: %d request(s) still pending after %.1fs", self.name, self.pending, grace_s
                )
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for queue in self._queues:
            while queue:
                self._fail(queue.popleft(), Unavailable(f"model {self.name} was unloaded"))
        self._queued = 0

    # ------------------------------------------------------------------ submit
    async def submit(
        self,
        inputs: NamedArrays,
        *,
        priority: int = 0,
        timeout_us: int | None = None,
        stamps: list[int] | None = None,
    ) -> tuple[NamedArrays, int, int]:
        """Queue one request; returns (outputs, queue_ns, compute_ns) once its batch has run.

        ``stamps``, when given, receives the batch's compute instants (see :class:`Pending`)."""
        if self._closed:
            raise Unavailable(f"model {self.name} is unloading")
        policy = self.policy
        level = priority or policy.default_priority_level or 1
        if policy.priority_levels:
            if not 1 <= level <= policy.priority_levels:
                from forwardpass.errors import InvalidArgument

                raise InvalidArgument(
                    f"priority {priority} is out of range; model {self.name} has levels "
                    f"1..{policy.priority_levels}"
                )
        else:
            level = 1
        qpolicy = policy.queue_policy(level)
        queue = self._queues[level - 1]
        limit = qpolicy.max_queue_size or policy.default_max_queue_size
        if len(queue) >= limit:
            raise Unavailable(
                f"model {self.name}: queue is full ({limit} requests waiting at priority {level}); "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        batching = policy.max_batch_size > 0
        rows = next(iter(inputs.values())).shape[0] if batching and inputs else 1
        now = time.monotonic_ns()
        item = Pending(
            inputs=inputs,
            rows=rows,
            signature=_signature(inputs, batching),
            future=loop.create_future(),
            level=level - 1,
            enqueued_ns=now,
            timeout_action=qpolicy.timeout_action,
            stamps=stamps,
        )
        timeout = qpolicy.default_timeout_microseconds
        if timeout_us is not None and (qpolicy.allow_timeout_override or not timeout):
            timeout = timeout_us
        if timeout > 0:
            item.deadline_ns = now + timeout * 1000
            item.timer = loop.call_later(timeout / 1e6, self._expire, item)
        queue.append(item)
        self._queued += 1
        assert self._wakeup is not None and self._idle is not None
        self._idle.clear()
        self._wakeup.set()
        return await item.future

    def _expire(self, item: Pending) -> None:
        """A queued request's timeout fired: reject it, or move it behind everything else."""
        item.timer = None
        queue = self._queues[item.level]
        try:
            queue.remove(item)
        except ValueError:
            return  # already taken into a batch
        if item.timeout_action == "DELAY":
            item.level = len(self._queues) - 1
            self._queues[item.level].append(item)
            return
        self._queued -= 1
        self._fail(item, RequestTimeout(f"model {self.name}: request timed out in the queue"))
        self._check_idle()

    # ------------------------------------------------------------------ batching
    def _ready_rows(self) -> tuple[int, int]:
        """(rows that could go in the next batch, age in ns of its oldest request)."""
        for queue in self._queues:
            if queue:
                head = queue[0]
                if not self.policy.merge:
                    return head.rows, time.monotonic_ns() - head.enqueued_ns
                rows = 0
                for item in queue:
                    if item.signature == head.signature:
                        rows += item.rows
                        if rows >= self.policy.max_batch_size:
                            break
                return rows, time.monotonic_ns() - head.enqueued_ns
        return 0, 0

    def _target_rows(self, available: int) -> int:
        cap = self.policy.max_batch_size
        available = min(available, cap)
        preferred = [p for p in self.policy.preferred_batch_sizes if p <= available]
        return preferred[-1] if preferred else available

    def _take(self) -> list[Pending]:
        cap = self.policy.max_batch_size
        for queue in self._queues:
            if not queue:
                continue
            if not self.policy.merge:
                self._queued -= 1
                return [queue.popleft()]
            signature = queue[0].signature
            available = 0
            for item in queue:
                if item.signature == signature:
                    available += item.rows
                    if available >= cap:
                        break
            limit = self._target_rows(available)
            batch: list[Pending] = []
            skipped: list[Pending] = []
            rows = 0
            while queue:
                item = queue[0]
                if item.signature != signature:
                    skipped.append(queue.popleft())
                    continue
                if batch and rows + item.rows > limit:
                    break
                batch.append(queue.popleft())
                rows += item.rows
                if rows >= limit:
                    break
            queue.extendleft(reversed(skipped))
            self._queued -= len(batch)
            return batch
        return []

    async def _wait_for_batch(self) -> list[Pending]:
        assert self._wakeup is not None
        delay = self.policy.max_queue_delay_ns
        while True:
            while not self._queued:
                self._wakeup.clear()
                await self._wakeup.wait()
            if delay and self.policy.merge:
                rows, age = self._ready_rows()
                preferred = self.policy.preferred_batch_sizes
                full = rows >= self.policy.max_batch_size or (
                    bool(preferred) and rows >= preferred[0]
                )
                if not full and age < delay:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), (delay - age) / 1e9)
                    except TimeoutError:
                        pass
                    continue
            batch = [p for p in self._take() if not p.future.done()]
            if batch:
                return batch

    async def _worker(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._wait_for_batch()
            self._running += len(batch)
            try:
                await self._execute(loop, instance, batch)
            finally:
                self._running -= len(batch)
                self._check_idle()

    def _check_idle(self) -> None:
        if not self.pending and self._idle is not None:
            self._idle.set()

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, instance: int, batch: Sequence[Pending]
    ) -> None:
        start = time.monotonic_ns()
        for item in batch:
            if item.timer is not None:
                item.timer.cancel()
                item.timer = None
        queue_ns = tuple(start - item.enqueued_ns for item in batch)
        rows = sum(item.rows for item in batch)
        try:
            outputs, times, parts = await loop.run_in_executor(
                self.executor, self._run_batch, instance, batch
            )
        except ForwardpassError as exc:
            for item in batch:
                self._fail(item, exc)
            self._emit(
                BatchRecord(rows, len(batch), queue_ns, 0, time.monotonic_ns() - start, 0, False)
            )
            return
        except Exception as exc:  # a bug in a backend that escaped its own translation
            log.exception("%s: batch failed", self.name)
            for item in batch:
                self._fail(item, InternalError(f"model {self.name}: {exc}"))
            self._emit(
                BatchRecord(rows, len(batch), queue_ns, 0, time.monotonic_ns() - start, 0, False)
            )
            return
        t0, t1, t2, t3 = times
        input_ns, infer_ns, output_ns = t1 - t0, t2 - t1, t3 - t2
        compute_ns = t3 - t0
        for item, part, q in zip(batch, parts, queue_ns, strict=True):
            if item.stamps is not None:
                item.stamps.extend(times)
            if not item.future.done():
                item.future.set_result((part, q, compute_ns))
        self._emit(BatchRecord(rows, len(batch), queue_ns, input_ns, infer_ns, output_ns, True))
        del outputs

    def _run_batch(
        self, instance: int, batch: Sequence[Pending]
    ) -> tuple[NamedArrays, tuple[int, int, int, int], list[NamedArrays]]:
        """Worker-thread side: merge, run, split. Checks the backend kept len(out) == len(in).

        Returns the outputs, the instants (start, merged, run, split), and each request's part.
        """
        t0 = time.monotonic_ns()
        if len(batch) == 1:
            merged = batch[0].inputs
        else:
            merged = {
                name: np.concatenate([item.inputs[name] for item in batch], axis=0)
                for name in batch[0].inputs
            }
        t1 = time.monotonic_ns()
        outputs = self.run(instance, merged)
        t2 = time.monotonic_ns()
        if len(batch) == 1:
            parts = [outputs]
        else:
            rows = sum(item.rows for item in batch)
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InternalError(
                        f"model {self.name}: output {name!r} has leading dimension "
                        f"{array.shape[0] if array.ndim else 'none'} for a batch of {rows} rows; "
                        "the model does not batch along its first axis"
                    )
            parts = []
            offset = 0
            for item in batch:
                end = offset + item.rows
                parts.append({name: array[offset:end] for name, array in outputs.items()})
                offset = end
        t3 = time.monotonic_ns()
        return outputs, (t0, t1, t2, t3), parts

    def _fail(self, item: Pending, exc: Exception) -> None:
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None
        if not item.future.done():
            item.future.set_exception(exc)

    def _emit(self, record: BatchRecord) -> None:
        if self.listener is None:
            return
        try:
            self.listener(record)
        except Exception:  # telemetry never fails a request
            log.exception("%s: batch listener failed", self.name)
