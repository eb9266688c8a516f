"""The sequence batcher: Triton's scheduler for stateful models (``sequence_batching``).

A sequence is the requests that share a correlation id (request parameter ``sequence_id``, a
uint64 or a string; 0 and ``""`` mean none), from the one flagged ``sequence_start`` to the one
flagged ``sequence_end``. What this batcher guarantees:

* A sequence holds one batch slot from its start to its end. Its requests run in arrival
  order, one at a time; requests of different sequences share a batch (one row each).
* ``direct``: a slot belongs to one model instance (``max_batch_size`` slots per instance, one
  when the model does not batch), so all of a sequence runs on that instance; rows are ordered
  by slot. ``oldest``: ``max_candidate_sequences`` slots; any free instance takes the oldest
  ready requests, up to ``max_batch_size``, preferring ``preferred_batch_size``.
  ``max_queue_delay_microseconds`` bounds how long a batch waits to fill (``direct`` also stops
  waiting once ``minimum_slot_utilization`` of the instance's slots are ready).
* More sequences than slots: a new sequence waits in a backlog, oldest first, and takes the
  next slot that frees, as in Triton; nothing is rejected for lack of slots.
* Control inputs (``control_input``) are filled per row: START/END/READY with the configured
  false/true values, CORRID with the correlation id. Rows are always READY: this batcher never
  pads a batch with idle slots (ONNX Runtime keeps no state per slot; the server does).
* Implicit state (``state``): each slot keeps the model's state tensors between requests.
  START resets them to ``initial_state`` (zeros or a file of ``initial_state/``; without one,
  zeros with variable dims as 1). After a batch, each row's state outputs become its slot's
  state; a failed request leaves its sequence's state as it was.
* A sequence without a request for ``max_sequence_idle_microseconds`` (and none queued) is
  released; a later request for it without START is rejected, saying it was released.
* One answer per request. A batch that fails on its data (:class:`InvalidArgument`) is re-run
  in halves, so one request's bad data fails only that request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import (
    InternalError,
    InvalidArgument,
    InvalidModelConfig,
    Unavailable,
)
from forwardpass.model_config import ModelConfig, SequenceBatching, SequenceControl, SequenceState
from forwardpass.scheduling.batcher import BatchRecord, batch_error, stop_workers
from forwardpass.scheduling.layout import BatchLayout

__all__ = [
    "SequenceBatcher",
    "SequenceFlags",
    "initial_states",
    "sequence_flags",
]

log = logging.getLogger("forwardpass.scheduling")

NamedArrays = dict[str, np.ndarray]
#: ``run(instance, inputs, outputs)`` runs one batch on one instance (a worker thread).
SequenceRunFn = Callable[[int, NamedArrays, Sequence[str]], NamedArrays]
CorrelationId = int | str

#: How many released-for-idleness ids are remembered, to say so when one comes back.
_REMEMBER_RELEASED = 4096
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    """A request's place in its sequence (Triton's correlation id and START/END flags)."""

    correlation_id: CorrelationId
    start: bool = False
    end: bool = False


def sequence_flags(params: Mapping[str, Any], model: str) -> SequenceFlags:
    """The sequence parameters of a request to a sequence model; Triton's messages on errors."""
    raw = params.get("sequence_id", 0)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise InvalidArgument(
            f"parameter sequence_id must be an unsigned integer or a string, got {raw!r}"
        )
    if isinstance(raw, int) and not 0 <= raw <= _UINT64_MAX:
        raise InvalidArgument(f"parameter sequence_id must fit in uint64, got {raw}")
    flags = {}
    for key in ("sequence_start", "sequence_end"):
        value = params.get(key, False)
        if not isinstance(value, bool):
            raise InvalidArgument(f"parameter {key} must be a boolean, got {value!r}")
        flags[key] = value
    if raw == 0 or raw == "":
        raise InvalidArgument(
            f"inference request to model '{model}' must specify a non-zero or non-empty "
            "correlation ID"
        )
    return SequenceFlags(raw, flags["sequence_start"], flags["sequence_end"])


def initial_states(config: ModelConfig, model_dir: Path) -> dict[str, np.ndarray]:
    """Each state's value at the start of a sequence (one slot's, without a batch axis)."""
    sequence = config.sequence_batching
    assert sequence is not None
    out: dict[str, np.ndarray] = {}
    for state in sequence.state:
        out[state.input_name] = _initial(state, model_dir)
    return out


def _initial(state: SequenceState, model_dir: Path) -> np.ndarray:
    dtype = state.data_type.numpy
    if not state.initial_state:
        return np.zeros(tuple(d if d > 0 else 1 for d in state.dims), dtype=dtype)
    initial = state.initial_state[0]
    where = f"state {state.input_name!r}: initial_state"
    if not _fits(initial.dims, state.dims):
        raise InvalidModelConfig(
            f"{where} dims {list(initial.dims)} do not match the state's dims {list(state.dims)}"
        )
    if initial.zero_data:
        return np.zeros(initial.dims, dtype=dtype)
    path = model_dir / "initial_state" / initial.data_file
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidModelConfig(f"{where} data_file {str(path)!r} cannot be read: {exc}") from exc
    expected = int(np.prod(initial.dims)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise InvalidModelConfig(
            f"{where} data_file {initial.data_file!r} holds {len(raw)} bytes; dims "
            f"{list(initial.dims)} of {state.data_type.config_name} need {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(initial.dims).copy()


def _fits(shape: Sequence[int], dims: Sequence[int]) -> bool:
    return len(shape) == len(dims) and all(
        d == -1 or d == s for s, d in zip(shape, dims, strict=True)
    )


@dataclass(slots=True, eq=False)
class SeqPending:
    """One queued request of a sequence, with the future its caller awaits."""

    inputs: NamedArrays
    flags: SequenceFlags
    future: asyncio.Future[tuple[NamedArrays, int, int]]
    enqueued_ns: int
    started_ns: int = 0


@dataclass(slots=True, eq=False)
class Slot:
    """A batch slot: the sequence it serves, that sequence's queue and its implicit state."""

    index: int
    #: ``direct``: the instance this slot runs on; ``oldest``: -1 (any).
    instance: int
    correlation_id: CorrelationId | None = None
    queue: collections.deque[SeqPending] = field(default_factory=collections.deque)
    state: NamedArrays = field(default_factory=dict)
    busy: bool = False
    #: Last arrival or completion, for the idle reaper.
    last_ns: int = 0


@dataclass(slots=True, eq=False)
class Backlog:
    """A sequence waiting for a slot, with the requests it sent meanwhile."""

    correlation_id: CorrelationId
    queue: collections.deque[SeqPending] = field(default_factory=collections.deque)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The worker's decision: run ``slots`` now, or wait ``wait_ns`` (0: for news)."""

    slots: tuple[Slot, ...] = ()
    wait_ns: int = 0


class SequenceBatcher:
    """Schedules the requests of one stateful model version (see the module docstring)."""

    def __init__(
        self,
        config: ModelConfig,
        run: SequenceRunFn,
        executor: Executor,
        instances: int,
        initial: NamedArrays,
        listener: Callable[[BatchRecord], None] | None = None,
        name: str = "",
    ) -> None:
        sequence = config.sequence_batching
        assert sequence is not None
        self.sequence: SequenceBatching = sequence
        self.model = config.name
        self.run = run
        self.executor = executor
        self.instances = max(1, instances)
        self.listener = listener
        self.name = name or config.name
        self.batching = config.max_batch_size > 0
        self.cap = max(1, config.max_batch_size)
        self.layout = BatchLayout.from_config(config)
        self.initial = initial
        self.outputs = tuple(
            dict.fromkeys(
                [o.name for o in config.outputs] + [s.output_name for s in sequence.state]
            )
        )
        self.client_outputs = frozenset(o.name for o in config.outputs)
        self._controls: list[tuple[str, SequenceControl]] = [
            (c.name, k) for c in sequence.control_input for k in c.control
        ]
        if sequence.strategy == "oldest":
            count = sequence.oldest.max_candidate_sequences or self.cap * self.instances
            self.slots = [Slot(i, -1) for i in range(count)]
            self.max_delay_ns = sequence.oldest.max_queue_delay_microseconds * 1000
            self.preferred = sequence.oldest.preferred_batch_size
        else:
            self.slots = [
                Slot(i * self.cap + j, i) for i in range(self.instances) for j in range(self.cap)
            ]
            self.max_delay_ns = sequence.max_queue_delay_microseconds * 1000
            self.preferred = ()
        self.idle_ns = sequence.max_sequence_idle_microseconds * 1000
        self._free: collections.deque[Slot] = collections.deque(self.slots)
        self._sequences: dict[CorrelationId, Slot] = {}
        self._backlogs: collections.deque[Backlog] = collections.deque()
        self._backlog_of: dict[CorrelationId, Backlog] = {}
        self._released: collections.OrderedDict[CorrelationId, None] = collections.OrderedDict()
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending = 0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks = [
            loop.create_task(self._worker(i), name=f"sequence-{self.name}-{i}")
            for i in range(self.instances)
        ]
        self._tasks.append(loop.create_task(self._reaper(), name=f"sequence-{self.name}-reaper"))

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return self._pending

    @property
    def active_sequences(self) -> int:
        """Sequences holding a slot or waiting in the backlog."""
        return sum(1 for s in self.slots if s.correlation_id is not None) + len(self._backlogs)

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let queued and running ones finish (up to ``grace_s``)."""
        self._closed = True
        await stop_workers(self.name, self._idle, self._pending, grace_s, self._tasks)
        error = Unavailable(f"model {self.name} was unloaded")
        for queue in [s.queue for s in self.slots] + [b.queue for b in self._backlogs]:
            while queue:
                item = queue.popleft()
                if not item.future.done():
                    item.future.set_exception(error)
        self._pending = 0

    # ------------------------------------------------------------------ submit
    async def submit(
        self, inputs: NamedArrays, flags: SequenceFlags
    ) -> tuple[NamedArrays, int, int]:
        """Queue one request of a sequence; (outputs, queue_ns, compute_ns) once it has run."""
        if self._closed:
            raise Unavailable(f"model {self.name} is unloading")
        cid = flags.correlation_id
        if self.batching and inputs:
            rows = next(iter(inputs.values())).shape[0]
            if rows != 1:
                raise InvalidArgument(
                    f"inference request to model '{self.model}' must specify batch-size 1 due "
                    f"to requirements of sequence batcher (got {rows})"
                )
        self._check_corrid_type(cid)
        slot = self._sequences.get(cid)
        backlog = self._backlog_of.get(cid)
        if not flags.start and slot is None and backlog is None:
            message = (
                f"inference request for sequence {cid} to model '{self.model}' must specify "
                "the START flag on the first request of the sequence"
            )
            if cid in self._released:
                message += (
                    f" (sequence {cid} was released after it was idle for more than "
                    f"{self.idle_ns // 1000} µs, max_sequence_idle_microseconds)"
                )
            raise InvalidArgument(message)
        if flags.start:
            self._released.pop(cid, None)
            if slot is not None or backlog is not None:
                log.warning(
                    "%s: sequence %s started again before it ended; its earlier requests run "
                    "first, then its state restarts",
                    self.name,
                    cid,
                )
        loop = asyncio.get_running_loop()
        now = time.monotonic_ns()
        item = SeqPending(inputs, flags, loop.create_future(), now)
        if slot is not None:
            slot.queue.append(item)
            slot.last_ns = now
            if flags.end:
                del self._sequences[cid]
        elif backlog is not None:
            backlog.queue.append(item)
            if flags.end:
                del self._backlog_of[cid]
        elif self._free:
            slot = self._free.popleft()
            slot.correlation_id = cid
            slot.queue.append(item)
            slot.last_ns = now
            if not flags.end:
                self._sequences[cid] = slot
        else:
            backlog = Backlog(cid)
            backlog.queue.append(item)
            self._backlogs.append(backlog)
            if not flags.end:
                self._backlog_of[cid] = backlog
        self._pending += 1
        assert self._wakeup is not None and self._idle is not None
        self._idle.clear()
        self._wakeup.set()
        return await item.future

    def _check_corrid_type(self, cid: CorrelationId) -> None:
        for name, control in self._controls:
            if control.kind != "CONTROL_SEQUENCE_CORRID" or control.data_type is DataType.BYTES:
                continue
            assert control.data_type is not None
            if isinstance(cid, str):
                raise InvalidArgument(
                    f"model '{self.model}' takes a numeric correlation ID (control input "
                    f"{name!r} is {control.data_type.config_name}), got the string {cid!r}"
                )
            limit = np.iinfo(control.data_type.numpy).max
            if cid > limit:
                raise InvalidArgument(
                    f"correlation ID {cid} does not fit control input {name!r} "
                    f"({control.data_type.config_name})"
                )

    # ------------------------------------------------------------------ slots
    def _release(self, slot: Slot) -> None:
        """The slot's sequence is over: hand the slot to the oldest backlog, or free it."""
        slot.correlation_id = None
        slot.state = {}
        if slot.queue:  # cannot happen: END or idleness leaves nothing queued
            log.error("%s: slot %d released with requests queued", self.name, slot.index)
        while self._backlogs:
            backlog = self._backlogs.popleft()
            if not backlog.queue:
                continue
            cid = backlog.correlation_id
            slot.correlation_id = cid
            slot.queue = backlog.queue
            slot.last_ns = time.monotonic_ns()
            if self._backlog_of.get(cid) is backlog:
                del self._backlog_of[cid]
                self._sequences[cid] = slot
            return
        self._free.append(slot)

    async def _reaper(self) -> None:
        """Release sequences idle for longer than ``max_sequence_idle_microseconds``."""
        while True:
            now = time.monotonic_ns()
            wait_ns = self.idle_ns
            for cid, slot in list(self._sequences.items()):
                if slot.busy or slot.queue:
                    continue
                remaining = slot.last_ns + self.idle_ns - now
                if remaining > 0:
                    wait_ns = min(wait_ns, remaining)
                    continue
                log.info(
                    "%s: sequence %s released after %d µs idle",
                    self.name,
                    cid,
                    self.idle_ns // 1000,
                )
                del self._sequences[cid]
                self._released[cid] = None
                while len(self._released) > _REMEMBER_RELEASED:
                    self._released.popitem(last=False)
                self._release(slot)
                assert self._wakeup is not None
                self._wakeup.set()
            await asyncio.sleep(max(wait_ns, 1_000_000) / 1e9)

    # ------------------------------------------------------------------ batching
    def _plan(self, instance: int, now_ns: int) -> _Plan:
        ready = [
            s
            for s in self.slots
            if s.queue and not s.busy and (s.instance == -1 or s.instance == instance)
        ]
        if not ready:
            return _Plan()
        ready.sort(key=lambda s: s.queue[0].enqueued_ns)
        first = ready[0].queue[0]
        signature = self._signature(ready[0], first)
        group = [s for s in ready if self._signature(s, s.queue[0]) == signature][: self.cap]
        waited = now_ns - first.enqueued_ns
        expired = waited >= self.max_delay_ns
        if self.sequence.strategy == "direct":
            group.sort(key=lambda s: s.index)
            utilization = self.sequence.minimum_slot_utilization
            full = len(group) >= self.cap or (
                utilization > 0 and len(group) / self.cap >= utilization
            )
            if full or expired or len(group) < len(ready):
                return _Plan(slots=tuple(group))
            return _Plan(wait_ns=self.max_delay_ns - waited)
        preferred = self.preferred
        largest = preferred[-1] if preferred else self.cap
        if len(group) >= largest or expired or len(group) < len(ready):
            if preferred and not expired:
                fitting = [p for p in preferred if p <= len(group)]
                if fitting:
                    group = group[: fitting[-1]]
            return _Plan(slots=tuple(group))
        if len(group) in preferred:
            return _Plan(slots=tuple(group))
        return _Plan(wait_ns=self.max_delay_ns - waited)

    def _signature(self, slot: Slot, item: SeqPending) -> tuple[object, ...]:
        """What two rows must share to be merged: input dims, and the state's dims."""
        inputs = self.layout.signature(item.inputs, self.batching)
        if item.flags.start or not slot.state:
            state = tuple((n, a.shape) for n, a in self.initial.items())
        else:
            state = tuple((n, a.shape) for n, a in slot.state.items())
        return inputs, state

    async def _worker(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            plan = self._plan(instance, time.monotonic_ns())
            if not plan.slots:
                wakeup.clear()
                if plan.wait_ns:
                    try:
                        await asyncio.wait_for(wakeup.wait(), plan.wait_ns / 1e9)
                    except TimeoutError:
                        pass
                else:
                    await wakeup.wait()
                continue
            batch = [(slot, slot.queue.popleft()) for slot in plan.slots]
            for slot, _ in batch:
                slot.busy = True
            try:
                await self._execute(loop, instance, batch)
            finally:
                for slot, item in batch:
                    slot.busy = False
                    slot.last_ns = time.monotonic_ns()
                    # After its END was queued, no request can reach this slot (the id maps
                    # to it no more); a restarted id holds another slot or a backlog.
                    cid = slot.correlation_id
                    owned = cid is not None and self._sequences.get(cid) is slot
                    if item.flags.end and not slot.queue and not owned:
                        self._release(slot)
                self._pending -= len(batch)
                if not self._pending and self._idle is not None:
                    self._idle.set()
                wakeup.set()

    async def _execute(
        self,
        loop: asyncio.AbstractEventLoop,
        instance: int,
        batch: Sequence[tuple[Slot, SeqPending]],
        retry: bool = False,
    ) -> None:
        """Run ``batch``; on a data error, run each half again until the culprits stand alone."""
        start = time.monotonic_ns()
        for _, item in batch:
            if not item.started_ns:
                item.started_ns = start
        queue_ns = tuple(item.started_ns - item.enqueued_ns for _, item in batch)
        try:
            input_ns, infer_ns, output_ns, parts, states = await loop.run_in_executor(
                self.executor, self._run_batch, instance, batch
            )
        except Exception as exc:
            error = batch_error(self.name, exc)
            self._emit(
                BatchRecord(
                    len(batch),
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
                await self._execute(loop, instance, batch[:middle], retry=True)
                await self._execute(loop, instance, batch[middle:], retry=True)
                return
            for _, item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        compute_ns = input_ns + infer_ns + output_ns
        for (slot, item), part, state, q in zip(batch, parts, states, queue_ns, strict=True):
            slot.state = state
            if not item.future.done():
                item.future.set_result((part, q, compute_ns))
        self._emit(
            BatchRecord(
                len(batch), len(batch), queue_ns, input_ns, infer_ns, output_ns, True, retry
            )
        )

    def _run_batch(
        self, instance: int, batch: Sequence[tuple[Slot, SeqPending]]
    ) -> tuple[int, int, int, list[NamedArrays], list[NamedArrays]]:
        """Worker-thread side: merge inputs, controls and states; run; split outputs and states."""
        requests = [item.inputs for _, item in batch]
        t0 = time.monotonic_ns()
        merged = dict(self.layout.merge(requests))
        for name, control in self._controls:
            merged[name] = self._control(control, [item.flags for _, item in batch])
        starting = [
            self.initial if item.flags.start or not slot.state else slot.state
            for slot, item in batch
        ]
        for name in self.initial:
            values = [state[name] for state in starting]
            merged[name] = np.stack(values) if self.batching else values[0]
        t1 = time.monotonic_ns()
        outputs = self.run(instance, merged, self.outputs)
        t2 = time.monotonic_ns()
        states = self._split_states(outputs, len(batch))
        client = {n: a for n, a in outputs.items() if n in self.client_outputs}
        parts = self.layout.split(client, requests, [1] * len(batch), self.name)
        t3 = time.monotonic_ns()
        return t1 - t0, t2 - t1, t3 - t2, parts, states

    def _split_states(self, outputs: NamedArrays, rows: int) -> list[NamedArrays]:
        result: list[NamedArrays] = [{} for _ in range(rows)]
        for state in self.sequence.state:
            array = outputs[state.output_name]
            if self.batching:
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InternalError(
                        f"model {self.name}: state output {state.output_name!r} has shape "
                        f"{list(array.shape)} for a batch of {rows}; it must be [batch]+dims"
                    )
                pieces = [array[i] for i in range(rows)]
            else:
                pieces = [array]
            for out, piece in zip(result, pieces, strict=True):
                if not _fits(piece.shape, state.dims):
                    raise InternalError(
                        f"model {self.name}: state output {state.output_name!r} has shape "
                        f"{list(piece.shape)} per sequence; the state's dims are "
                        f"{list(state.dims)}"
                    )
                out[state.input_name] = np.array(piece, dtype=state.data_type.numpy, copy=True)
        return result

    def _control(self, control: SequenceControl, flags: Sequence[SequenceFlags]) -> np.ndarray:
        """One control input's tensor: ``[rows, 1]`` when the model batches, else ``[1]``."""
        values: list[Any]
        if control.kind == "CONTROL_SEQUENCE_CORRID":
            assert control.data_type is not None
            if control.data_type is DataType.BYTES:
                values = [str(f.correlation_id).encode() for f in flags]
                array = np.array(values, dtype=object)
            else:
                array = np.array([f.correlation_id for f in flags], dtype=control.data_type.numpy)
        else:
            on = {
                "CONTROL_SEQUENCE_START": [f.start for f in flags],
                "CONTROL_SEQUENCE_END": [f.end for f in flags],
                "CONTROL_SEQUENCE_READY": [True for _ in flags],
            }[control.kind]
            pair: tuple[Any, ...]
            dtype: Any
            if control.int32_false_true:
                pair, dtype = control.int32_false_true, np.int32
            elif control.fp32_false_true:
                pair, dtype = control.fp32_false_true, np.float32
            else:
                pair, dtype = control.bool_false_true, np.bool_
            array = np.array([pair[1] if v else pair[0] for v in on], dtype=dtype)
        return array.reshape(-1, 1) if self.batching else array.reshape(1)

    def _emit(self, record: BatchRecord) -> None:
        if self.listener is None:
            return
        try:
            self.listener(record)
        except Exception:  # telemetry never fails a request
            log.exception("%s: batch listener failed", self.name)
