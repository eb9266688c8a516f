"""The dynamic batcher: one per loaded model version.

Requests wait in per-priority queues. Each model instance runs a worker coroutine that, once
free, plans the next batch the way Triton's dynamic batcher does (core
``src/dynamic_batch_scheduler.cc``, ``GetDynamicBatch``). It walks the queued requests oldest
first, highest priority first, adding each to a pending batch until one would not fit: its
*signature* (input names, dtypes, non-batch dims; ragged inputs' dims excepted) differs, or it
would take the batch past ``max_batch_size``. Then:

* the pending batch once reached a preferred size: the largest such prefix goes at once
  (with no preferred sizes, ``max_batch_size`` plays that part), and so does the prefix
  before the request that would take it past the largest preferred size;
* a request that could not join (another shape, or no room) or a batch of at least the
  largest preferred size: everything pending goes at once, it cannot grow;
* ``max_queue_delay_microseconds`` 0, or the oldest pending request has waited that long:
  everything pending goes (so with no delay a free instance takes what is queued, a lone
  request never waits, and under load batches grow while the instances are busy);
* otherwise the worker waits until the delay runs out or another request arrives.

With ``parameters { key: "batching" value: { string_value: "adaptive" } }`` the last two
rules change (see :mod:`forwardpass.scheduling.adaptive`): a free instance holds what is
queued only while the policy expects the wait to pay off, up to the next preferred size or
``max_batch_size``, capped by ``max_queue_delay_microseconds`` where set (0 means no cap, not
"never wait") and by the latency objective ``max_latency_ms``; and a batch takes at most the
rows the policy allows (the size it measured to serve the most rows/s, or a probe of a
neighbouring size), which plays ``max_batch_size``'s part in the rules. The other rules, and
every guarantee below, are unchanged.

Guarantees: every submitted request gets exactly one result or one error. A failure in one
request's data never fails the requests batched with it: a batch whose backend call fails
with an :class:`InvalidArgument` (the data was wrong, e.g. an index out of range inside the
graph) is run again in halves until the failing requests stand alone; they alone get the
error. Other failures (:class:`InternalError`, 500) fail the whole batch at once, without
retries. A request whose queue timeout expires is rejected (``timeout_action: REJECT``) or
moved behind everything else (``DELAY``); a full queue rejects new requests with
:class:`Unavailable`.

Inline mode (``inline_ns`` > 0, one instance, merged batches): a batch runs on the event
loop's thread instead of the executor when the recent runs of batches of its size (rows, by
power of two) took less than ``inline_ns`` each (an average over the last few runs, updated
by every run, inline or not), and while batches hold about one request each (requests arrive
one by one, as grpcio delivers them): where batches do form, the hop's wait is what lets the
next batch grow, which is worth more. For a network that takes tens of microseconds the thread hop
costs more than the run itself. The first batch of each size, and any size whose runs got
slower than the bound, go to the executor (a size class a little slower is re-measured inline
now and then: from a thread, a run also counts its wait for the GIL), so an inline run is a
short stall of the loop; and
after each inline run the worker yields to the loop once before planning the next batch, so
a full queue does not hold the other connections up. The guarantees above are unchanged:
the same code runs the batch, only the thread differs. Only a backend that declares itself
``inline_safe`` (it never waits on the loop) may be run so; the engine decides that.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    InvalidArgument,
    RequestTimeout,
    Unavailable,
)
from forwardpass.model_config import DynamicBatching, ModelConfig, QueuePolicy
from forwardpass.runtime.base import NamedArrays
from forwardpass.scheduling.adaptive import AdaptivePolicy, AdaptiveSettings, read_adaptive
from forwardpass.scheduling.layout import BatchLayout

__all__ = [
    "BatchRecord",
    "Batcher",
    "BatcherPolicy",
    "Pending",
    "RequestsFn",
    "RunFn",
    "batch_error",
    "stop_workers",
]

log = logging.getLogger("forwardpass.scheduling")

#: Runs one merged batch on one instance, in a worker thread: (instance, inputs) -> outputs.
RunFn = Callable[[int, NamedArrays], NamedArrays]
#: Runs one batch unmerged (the Python backend): (instance, each request's inputs, each
#: request's context) -> one result or one error per request.
RequestsFn = Callable[[int, list[NamedArrays], list[object]], list[NamedArrays | ForwardpassError]]


#: Inline mode's probes (see ``Batcher._inline``).
_PROBE_FACTOR = 4
_PROBE_EVERY = 16
#: Inline only while batches average fewer requests than this (see ``Batcher._execute``).
_INLINE_MAX_PER_BATCH = 1.5


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
    #: Ragged inputs, batch inputs and batch outputs.
    layout: BatchLayout = field(default_factory=BatchLayout)
    #: Set when the config asks for adaptive batching instead of Triton's waiting rules.
    adaptive: AdaptiveSettings | None = None

    @classmethod
    def from_config(
        cls,
        max_batch_size: int,
        dynamic: DynamicBatching | None,
        instances: int,
        default_max_queue_size: int,
        layout: BatchLayout | None = None,
        adaptive: AdaptiveSettings | None = None,
    ) -> BatcherPolicy:
        layout = layout or BatchLayout()
        if dynamic is None:
            return cls(
                max_batch_size=max_batch_size,
                instances=instances,
                default_max_queue_size=default_max_queue_size,
                layout=layout,
            )
        return cls(
            max_batch_size=max_batch_size,
            merge=max_batch_size > 0,
            max_queue_delay_ns=dynamic.max_queue_delay_microseconds * 1000,
            preferred_batch_sizes=tuple(sorted(set(dynamic.preferred_batch_size))),
            priority_levels=dynamic.priority_levels,
            default_priority_level=dynamic.default_priority_level,
            default_queue_policy=dynamic.default_queue_policy,
            priority_queue_policy=dict(dynamic.priority_queue_policy),
            default_max_queue_size=default_max_queue_size,
            instances=instances,
            layout=layout,
            adaptive=adaptive,
        )

    @classmethod
    def for_model(
        cls, config: ModelConfig, instances: int, default_max_queue_size: int
    ) -> BatcherPolicy:
        """The policy of a model config (batching, queues, ragged inputs, batch inputs)."""
        adaptive = read_adaptive(
            config.parameters,
            config.max_batch_size,
            config.dynamic_batching is not None,
            config.sequence_batching is not None,
        )
        return cls.from_config(
            config.max_batch_size,
            config.dynamic_batching,
            instances,
            default_max_queue_size,
            BatchLayout.from_config(config),
            adaptive,
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
    #: When its batch started (set once, kept through any re-runs of a failed batch).
    started_ns: int = 0
    #: When the caller asked (a traced request): the batch's monotonic-clock instants are
    #: appended here: compute start, input end (merged), output start (backend done), end.
    stamps: list[int] | None = None
    #: What an unmerged backend is told about the request (``RequestContext``).
    context: object = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What happened to one backend execution, for statistics and metrics listeners."""

    batch_size: int
    requests: int
    #: Per request: nanoseconds spent queued.
    queue_ns: tuple[int, ...]
    #: Time merging inputs, running the backend, splitting outputs.
    input_ns: int
    infer_ns: int
    output_ns: int
    ok: bool
    #: A re-run of part of a failed batch, to find the request whose data failed it. Its
    #: requests' queue time was already reported with the first run.
    retry: bool = False


@dataclass(frozen=True, slots=True)
class _Plan:
    """The worker's decision: take ``count`` requests now, or wait ``wait_ns`` (0: for news)."""

    count: int = 0
    wait_ns: int = 0


class Batcher:
    """Queues requests for one model version and runs them in batches on its instances."""

    def __init__(
        self,
        run: RunFn,
        policy: BatcherPolicy,
        executor: Executor,
        listener: Callable[[BatchRecord], None] | None = None,
        name: str = "",
        run_requests: RequestsFn | None = None,
        inline_ns: int = 0,
    ) -> None:
        self.run = run
        #: Set for a backend that takes its batches unmerged: each request answered alone.
        self.run_requests = run_requests
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
        #: Bound for inline runs (see the module docstring); 0: always the executor.
        self.inline_ns = inline_ns if policy.instances == 1 and run_requests is None else 0
        #: Per size class (rows' bit length): a moving average of a batch's run, in ns.
        self._cost: dict[int, float] = {}
        self._skipped: dict[int, int] = {}
        self._per_batch = 1.0
        #: Adaptive batching's estimates and decisions; ``None``: Triton's rules.
        self.adaptive: AdaptivePolicy | None = (
            AdaptivePolicy(policy.adaptive, policy.max_queue_delay_ns, policy.max_batch_size)
            if policy.adaptive is not None and policy.merge
            else None
        )

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
        await stop_workers(self.name, self._idle, self.pending, grace_s, self._workers)
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
        context: object = None,
    ) -> tuple[NamedArrays, int, int]:
        """Queue one request; returns (outputs, queue_ns, compute_ns) once its batch has run.

        ``stamps``, when given, receives the batch's compute instants (see :class:`Pending`)."""
        if self._closed:
            raise Unavailable(f"model {self.name} is unloading")
        policy = self.policy
        level = priority or policy.default_priority_level or 1
        if policy.priority_levels:
            if not 1 <= level <= policy.priority_levels:
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
            signature=policy.layout.signature(inputs, batching),
            future=loop.create_future(),
            level=level - 1,
            enqueued_ns=now,
            timeout_action=qpolicy.timeout_action,
            stamps=stamps,
            context=context,
        )
        timeout = qpolicy.default_timeout_microseconds
        if timeout_us is not None and (qpolicy.allow_timeout_override or not timeout):
            timeout = timeout_us
        if timeout > 0:
            item.deadline_ns = now + timeout * 1000
            item.timer = loop.call_later(timeout / 1e6, self._expire, item)
        queue.append(item)
        self._queued += 1
        if self.adaptive is not None:
            self.adaptive.arrived(now, rows)
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
        assert self._wakeup is not None
        self._wakeup.set()  # the pending batch changed: plan again
        if item.timeout_action == "DELAY":
            item.level = len(self._queues) - 1
            self._queues[item.level].append(item)
            return
        self._queued -= 1
        self._fail(item, RequestTimeout(f"model {self.name}: request timed out in the queue"))
        self._check_idle()

    # ------------------------------------------------------------------ batching
    def _in_order(self) -> Iterator[Pending]:
        """Queued requests in the order batches take them: by priority, then oldest first."""
        return itertools.chain.from_iterable(self._queues)

    def _plan(self, now_ns: int, free_since_ns: int = 0) -> _Plan:
        """Triton's ``GetDynamicBatch``: how many queued requests to send now, or how long to wait.

        See the module docstring for the rules; ``free_since_ns`` (when the asking instance
        became free) is for the adaptive policy.
        """
        policy = self.policy
        if not policy.merge:
            return _Plan(count=1)
        preferred = policy.preferred_batch_sizes
        cap = policy.max_batch_size
        if self.adaptive is not None:
            cap = self.adaptive.batch_limit() or cap
        largest = min(preferred[-1], cap) if preferred else cap
        rows = count = best = 0
        oldest = now_ns
        blocked = False
        signature: tuple[object, ...] = ()
        for item in self._in_order():
            if count == 0:
                signature = item.signature
            else:
                if rows + item.rows > largest and not best:
                    best = count
                if rows + item.rows > cap or item.signature != signature:
                    blocked = True
                    break
            rows += item.rows
            count += 1
            oldest = min(oldest, item.enqueued_ns)
            if rows in preferred:
                best = count
        if not count:
            return _Plan()
        delay = policy.max_queue_delay_ns
        waited = now_ns - oldest
        expired = delay > 0 and waited >= delay
        if best and not expired:
            return _Plan(count=best)
        if blocked or rows >= largest or expired:
            return _Plan(count=count)
        if self.adaptive is not None:
            target = min(next((size for size in preferred if size > rows), cap), cap)
            hold = self.adaptive.hold_ns(
                now_ns=now_ns,
                rows=rows,
                target=target,
                oldest_ns=oldest,
                free_since_ns=free_since_ns,
            )
            return _Plan(wait_ns=hold) if hold > 0 else _Plan(count=count)
        if delay == 0:
            return _Plan(count=count)
        return _Plan(wait_ns=delay - waited)

    def _take(self, count: int) -> list[Pending]:
        batch: list[Pending] = []
        for queue in self._queues:
            while queue and len(batch) < count:
                batch.append(queue.popleft())
            if len(batch) == count:
                break
        self._queued -= len(batch)
        return batch

    async def _wait_for_batch(self) -> list[Pending]:
        wakeup = self._wakeup
        assert wakeup is not None
        free_since = time.monotonic_ns()
        while True:
            if not self._queued:
                wakeup.clear()
                await wakeup.wait()
                continue
            plan = self._plan(time.monotonic_ns(), free_since)
            if plan.count:
                batch = [p for p in self._take(plan.count) if not p.future.done()]
                if batch:
                    return batch
                continue
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), plan.wait_ns / 1e9)
            except TimeoutError:
                pass

    async def _worker(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._wait_for_batch()
            self._running += len(batch)
            try:
                inline = await self._execute(loop, instance, batch)
            finally:
                self._running -= len(batch)
                self._check_idle()
            if inline and self._queued:
                await asyncio.sleep(0)  # let the loop serve others before the next batch

    def _check_idle(self) -> None:
        if not self.pending and self._idle is not None:
            self._idle.set()

    async def _execute(
        self,
        loop: asyncio.AbstractEventLoop,
        instance: int,
        batch: Sequence[Pending],
        retry: bool = False,
    ) -> bool:
        """Run ``batch``; on a data error, run each half again until the culprits stand alone.

        A batch of n requests takes at most 2n - 1 backend runs, and only when the backend
        blamed the data (:class:`InvalidArgument`); any other failure fails the batch at once.
        Returns whether any run was inline (on the loop's thread).
        """
        start = time.monotonic_ns()
        for item in batch:
            if item.timer is not None:
                item.timer.cancel()
                item.timer = None
            if not item.started_ns:
                item.started_ns = start
        queue_ns = tuple(item.started_ns - item.enqueued_ns for item in batch)
        rows = sum(item.rows for item in batch)
        size = rows.bit_length()
        cost = self._cost.get(size) if self.inline_ns else None
        inline = False
        if self.inline_ns:
            # Requests per batch, averaged: where batches do form, the executor's hop is time
            # in which the next batch grows, and that is worth more than the hop costs.
            self._per_batch += (len(batch) - self._per_batch) / 16
            if cost is not None and self._per_batch < _INLINE_MAX_PER_BATCH:
                inline = self._inline(size, cost)
        try:
            if inline:
                times, parts = self._run_batch(instance, batch)
            else:
                times, parts = await loop.run_in_executor(
                    self.executor, self._run_batch, instance, batch
                )
        except Exception as exc:
            error = batch_error(self.name, exc)
            self._emit(
                BatchRecord(
                    rows,
                    len(batch),
                    queue_ns,
                    0,
                    time.monotonic_ns() - start,
                    0,
                    False,
                    retry,
                )
            )
            if len(batch) > 1 and isinstance(error, InvalidArgument):
                middle = len(batch) // 2
                first = await self._execute(loop, instance, batch[:middle], retry=True)
                second = await self._execute(loop, instance, batch[middle:], retry=True)
                return inline or first or second
            for item in batch:
                self._fail(item, error)
            return inline
        t0, t1, t2, t3 = times
        input_ns, infer_ns, output_ns = t1 - t0, t2 - t1, t3 - t2
        compute_ns = t3 - t0
        if self.adaptive is not None and not retry:
            self.adaptive.served(rows, compute_ns, t3)
        if self.inline_ns:
            # Every run updates its size's average (weight 1/8), so a model that slows down
            # moves to the executor, and one that speeds up again comes back.
            self._cost[size] = compute_ns if cost is None else cost + (compute_ns - cost) / 8
        for item, part, q in zip(batch, parts, queue_ns, strict=True):
            if item.stamps is not None:
                item.stamps.extend(times)
            if item.future.done():
                continue
            if isinstance(part, ForwardpassError):  # an unmerged backend failed this one
                item.future.set_exception(part)
            else:
                item.future.set_result((part, q, compute_ns))
        self._emit(
            BatchRecord(rows, len(batch), queue_ns, input_ns, infer_ns, output_ns, True, retry)
        )
        return inline

    def _inline(self, size: int, cost: float) -> bool:
        """Whether a batch of this size class runs on the loop's thread.

        Below the bound: yes. A run in a worker thread also counts the wait for the GIL while
        the loop is busy, so a fast model can look slow from there; a size class within
        ``_PROBE_FACTOR`` times the bound is tried inline every ``_PROBE_EVERY`` batches to
        measure it without that wait. Slower ones never run inline.
        """
        if cost < self.inline_ns:
            return True
        if cost >= self.inline_ns * _PROBE_FACTOR:
            return False
        skipped = self._skipped.get(size, 0) + 1
        self._skipped[size] = 0 if skipped >= _PROBE_EVERY else skipped
        return skipped >= _PROBE_EVERY

    def _run_batch(
        self, instance: int, batch: Sequence[Pending]
    ) -> tuple[tuple[int, int, int, int], list[NamedArrays | ForwardpassError]]:
        """Worker-thread (or loop, inline) side: merge, run, split (the layout checks rows).

        Returns the instants (start, merged, run, split) and each request's part (an error
        for a request an unmerged backend failed alone).
        """
        layout = self.policy.layout
        requests = [item.inputs for item in batch]
        t0 = time.monotonic_ns()
        if self.run_requests is not None:
            results = self.run_requests(instance, requests, [item.context for item in batch])
            if len(results) != len(batch):
                raise InternalError(
                    f"model {self.name}: {len(results)} result(s) for {len(batch)} request(s)"
                )
            t1 = time.monotonic_ns()
            return (t0, t0, t1, t1), results
        merged = layout.merge(requests)
        t1 = time.monotonic_ns()
        outputs = self.run(instance, merged)
        t2 = time.monotonic_ns()
        parts = layout.split(outputs, requests, [item.rows for item in batch], self.name)
        t3 = time.monotonic_ns()
        return (t0, t1, t2, t3), list(parts)

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


# -- shared by the dynamic and the sequence batcher ---------------------------------------------


def batch_error(name: str, exc: Exception) -> ForwardpassError:
    """The error a failed batch gives its requests: the backend's own, or (a bug in a backend
    that escaped its translation) a logged 500 naming the model."""
    if isinstance(exc, ForwardpassError):
        return exc
    log.exception("%s: batch failed", name, exc_info=exc)
    return InternalError(f"model {name}: {exc}")


async def stop_workers(
    name: str,
    idle: asyncio.Event | None,
    pending: int,
    grace_s: float,
    workers: Sequence[asyncio.Task[None]],
) -> None:
    """Wait (up to ``grace_s``) for the ``pending`` requests to finish, then end the workers."""
    if idle is not None and pending:
        try:
            await asyncio.wait_for(idle.wait(), grace_s)
        except TimeoutError:
            log.warning("%s: %d request(s) still pending after %.1fs", name, pending, grace_s)
    for task in workers:
        task.cancel()
    for task in workers:
        try:
            await task
        except asyncio.CancelledError:
            pass
