"""Batcher behaviour against a plain Python run function (no model, no backend)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    InvalidArgument,
    RequestTimeout,
    Unavailable,
    http_status,
)
from forwardpass.model_config import DynamicBatching, QueuePolicy
from forwardpass.scheduling.batcher import Batcher, BatcherPolicy, BatchRecord


class Recorder:
    """A run function that doubles its input and remembers every batch it saw."""

    def __init__(
        self,
        delay: float = 0.0,
        fail_on: float | None = None,
        error: type[ForwardpassError] = InternalError,
    ) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.error = error
        self.batches: list[int] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None

    def __call__(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(5)
        x = inputs["x"]
        with self.lock:
            self.batches.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise self.error(f"backend exploded on purpose: {self.fail_on} in the batch")
        return {"y": x * 2}


def policy(**kw: object) -> BatcherPolicy:
    dyn = DynamicBatching(**{k: v for k, v in kw.items() if k in DynamicBatching.__slots__})  # type: ignore[arg-type]
    rest = {k: v for k, v in kw.items() if k not in DynamicBatching.__slots__}
    return BatcherPolicy.from_config(
        int(rest.pop("max_batch_size", 8)),  # type: ignore[arg-type]
        None if rest.pop("no_dynamic", False) else dyn,
        int(rest.pop("instances", 1)),  # type: ignore[arg-type]
        int(rest.pop("default_max_queue_size", 1000)),  # type: ignore[arg-type]
    )


async def make(
    run: Recorder, pol: BatcherPolicy, records: list[BatchRecord] | None = None
) -> Batcher:
    batcher = Batcher(
        run,
        pol,
        ThreadPoolExecutor(max_workers=pol.instances),
        (records.append if records is not None else None),
        name="m",
    )
    batcher.start()
    return batcher


def row(value: float, rows: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=np.float32)}


def test_every_request_gets_its_own_rows_back() -> None:
    async def main() -> None:
        run = Recorder(delay=0.01)
        batcher = await make(run, policy(max_batch_size=16))
        results = await asyncio.gather(*(batcher.submit(row(i, rows=1 + i % 3)) for i in range(40)))
        for i, (out, _q, _c) in enumerate(results):
            assert out["y"].shape == (1 + i % 3, 3)
            assert np.all(out["y"] == 2 * i)
        assert max(run.batches) > 1, "concurrent requests were never merged"
        assert all(b <= 16 for b in run.batches)
        await batcher.close()

    asyncio.run(main())


#: How late a batch may leave after its deadline (event-loop and thread hand-off jitter on a
#: busy machine); a batcher that waits 100 ms too long fails every bound below.
LATE = 0.06
#: How early a delayed batch may leave (timer granularity).
EARLY = 0.005


def test_lone_request_does_not_wait_with_zero_delay() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = await make(run, policy(max_batch_size=8))
        t0 = time.perf_counter()
        await batcher.submit(row(1))
        assert time.perf_counter() - t0 < LATE  # nothing to wait for: no timer, no delay
        await batcher.close()

    asyncio.run(main())


def test_queue_delay_lets_a_batch_fill() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = await make(run, policy(max_batch_size=8, max_queue_delay_microseconds=200_000))
        t0 = time.perf_counter()
        first = asyncio.ensure_future(batcher.submit(row(1)))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(row(2)))
        await asyncio.gather(first, second)
        elapsed = time.perf_counter() - t0
        # Two rows reach no preferred size and not max_batch_size: they wait out the delay
        # of the oldest, then leave together.
        assert 0.2 - EARLY <= elapsed < 0.2 + LATE
        assert run.batches == [2]
        await batcher.close()

    asyncio.run(main())


def test_full_batch_dispatches_before_the_delay() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = await make(run, policy(max_batch_size=4, max_queue_delay_microseconds=5_000_000))
        t0 = time.perf_counter()
        await asyncio.gather(*(batcher.submit(row(i)) for i in range(4)))
        assert time.perf_counter() - t0 < LATE
        assert run.batches == [4]
        await batcher.close()

    asyncio.run(main())


def test_lone_request_of_no_preferred_size_waits_the_full_delay() -> None:
    # Triton: preferred sizes [2, 6]; a batch-3 request is neither, so it waits the delay.
    async def main() -> None:
        run = Recorder()
        pol = policy(
            max_batch_size=8, preferred_batch_size=(2, 6), max_queue_delay_microseconds=200_000
        )
        batcher = await make(run, pol)
        t0 = time.perf_counter()
        await batcher.submit(row(1, rows=3))
        elapsed = time.perf_counter() - t0
        assert 0.2 - EARLY <= elapsed < 0.2 + LATE
        assert run.batches == [3]
        await batcher.close()

    asyncio.run(main())


def test_reaching_a_preferred_size_sends_at_once() -> None:
    async def main() -> None:
        run = Recorder()
        pol = policy(
            max_batch_size=8, preferred_batch_size=(2, 6), max_queue_delay_microseconds=10_000_000
        )
        batcher = await make(run, pol)
        first = asyncio.ensure_future(batcher.submit(row(1, rows=3)))
        await asyncio.sleep(0.3)
        assert not first.done(), "a batch of 3 (no preferred size) left before the 10 s delay"
        t0 = time.perf_counter()
        # 3 + 3 = 6, a preferred size: both leave now, 9.7 s before the delay runs out.
        second = asyncio.ensure_future(batcher.submit(row(2, rows=3)))
        await asyncio.gather(first, second)
        assert time.perf_counter() - t0 < LATE
        assert run.batches == [6]
        # Two single rows make the other preferred size, 2.
        t0 = time.perf_counter()
        await asyncio.gather(batcher.submit(row(3)), batcher.submit(row(4)))
        assert time.perf_counter() - t0 < LATE
        assert run.batches == [6, 2]
        await batcher.close()

    asyncio.run(main())


def test_exceeding_the_largest_preferred_size_sends_what_fits() -> None:
    # Pending 3 rows; a 4-row request would make 7 > 6 (the largest preferred size): Triton
    # sends the 3 at once and the 4 waits for its own delay.
    async def main() -> None:
        run = Recorder()
        pol = policy(
            max_batch_size=8, preferred_batch_size=(2, 6), max_queue_delay_microseconds=300_000
        )
        batcher = await make(run, pol)
        first = asyncio.ensure_future(batcher.submit(row(1, rows=3)))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        second = asyncio.ensure_future(batcher.submit(row(2, rows=4)))
        await first
        assert time.perf_counter() - t0 < LATE
        await second
        assert 0.3 - EARLY <= time.perf_counter() - t0 < 0.3 + LATE
        assert run.batches == [3, 4]
        await batcher.close()

    asyncio.run(main())


def test_delay_expiry_sends_everything_pending() -> None:
    async def main() -> None:
        run = Recorder()
        pol = policy(
            max_batch_size=8, preferred_batch_size=(4,), max_queue_delay_microseconds=200_000
        )
        batcher = await make(run, pol)
        t0 = time.perf_counter()
        await asyncio.gather(*(batcher.submit(row(i)) for i in range(3)))
        elapsed = time.perf_counter() - t0
        assert 0.2 - EARLY <= elapsed < 0.2 + LATE
        assert run.batches == [3]
        await batcher.close()

    asyncio.run(main())


def test_a_request_that_cannot_join_releases_the_pending_batch() -> None:
    async def main() -> None:
        run = Recorder()
        pol = policy(
            max_batch_size=8, preferred_batch_size=(4,), max_queue_delay_microseconds=300_000
        )
        batcher = await make(run, pol)
        narrow = asyncio.ensure_future(batcher.submit(row(1, width=3)))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        wide = asyncio.ensure_future(batcher.submit(row(2, width=5)))
        # The width-3 batch cannot grow past a width-5 request: it leaves now, not at 300 ms.
        await narrow
        assert time.perf_counter() - t0 < LATE
        assert not wide.done()
        await wide  # alone and of no preferred size: waits out its own delay
        assert 0.3 - EARLY <= time.perf_counter() - t0 < 0.3 + LATE
        assert run.batches == [1, 1]
        await batcher.close()

    asyncio.run(main())


def test_an_expired_request_leaves_the_pending_batch() -> None:
    # A request whose timeout fires while its batch waits is rejected; the others still wait
    # for the delay (not released early by the expiry, not stuck after it).
    async def main() -> None:
        run = Recorder()
        pol = policy(
            max_batch_size=8,
            max_queue_delay_microseconds=200_000,
            default_queue_policy=QueuePolicy(allow_timeout_override=True),
        )
        batcher = await make(run, pol)
        t0 = time.perf_counter()
        keep = asyncio.ensure_future(batcher.submit(row(1)))
        drop = asyncio.ensure_future(batcher.submit(row(2), timeout_us=50_000))
        with pytest.raises(RequestTimeout):
            await drop
        await keep
        assert 0.2 - EARLY <= time.perf_counter() - t0 < 0.2 + LATE
        assert run.batches == [1]
        await batcher.close()

    asyncio.run(main())


def test_preferred_batch_size_is_honoured() -> None:
    async def main() -> None:
        run = Recorder()
        run.gate = threading.Event()
        batcher = await make(run, policy(max_batch_size=16, preferred_batch_size=(4,)))
        blocker = asyncio.ensure_future(batcher.submit(row(0)))
        await asyncio.sleep(0.02)
        rest = [asyncio.ensure_future(batcher.submit(row(i))) for i in range(1, 11)]
        await asyncio.sleep(0.02)
        run.gate.set()
        await asyncio.gather(blocker, *rest)
        assert run.batches[0] == 1
        assert run.batches[1:3] == [4, 4]
        await batcher.close()

    asyncio.run(main())


def test_different_shapes_are_never_merged() -> None:
    async def main() -> None:
        run = Recorder(delay=0.005)
        batcher = await make(run, policy(max_batch_size=16))
        results = await asyncio.gather(
            *(batcher.submit(row(i, width=3 if i % 2 else 5)) for i in range(20))
        )
        for i, (out, _, _) in enumerate(results):
            assert out["y"].shape == (1, 3 if i % 2 else 5)
        await batcher.close()

    asyncio.run(main())


async def queue_behind_a_blocker(
    run: Recorder, batcher: Batcher, inputs: list[dict[str, np.ndarray]]
) -> list[object]:
    """Submit ``inputs`` while one request holds the only instance, so they queue together
    and leave as one merged batch when it finishes; their results or errors, in order."""
    run.gate = threading.Event()
    blocker = asyncio.ensure_future(batcher.submit(row(-1)))
    await asyncio.sleep(0.02)
    queued = [asyncio.ensure_future(batcher.submit(x)) for x in inputs]
    await asyncio.sleep(0.02)
    run.gate.set()
    await blocker
    return list(await asyncio.gather(*queued, return_exceptions=True))


def test_a_data_error_fails_only_the_request_that_caused_it() -> None:
    async def main() -> None:
        records: list[BatchRecord] = []
        run = Recorder(fail_on=13.0, error=InvalidArgument)
        batcher = await make(run, policy(max_batch_size=32), records)
        results = await queue_behind_a_blocker(run, batcher, [row(i) for i in range(20)])
        for i, result in enumerate(results):
            if i == 13:
                assert isinstance(result, InvalidArgument)
                assert "exploded" in result.message
            else:
                assert not isinstance(result, BaseException), result
                out, _q, _c = result  # type: ignore[misc]
                assert np.all(out["y"] == 2 * i)
        # The 20 really shared a batch, which failed and was bisected down to the culprit.
        first = records[1]
        assert (first.requests, first.ok, first.retry) == (20, False, False)
        assert all(r.retry for r in records[2:])
        assert sum(r.requests for r in records[2:] if r.ok) == 19
        assert [r.requests for r in records[2:] if not r.ok][-1] == 1
        assert len(records) - 1 <= 2 * 20 - 1  # bounded: never more runs than a full bisection
        await batcher.close()

    asyncio.run(main())


def test_a_backend_failure_fails_its_batch_once_without_retries() -> None:
    async def main() -> None:
        records: list[BatchRecord] = []
        run = Recorder(fail_on=3.0, error=InternalError)
        batcher = await make(run, policy(max_batch_size=32), records)
        results = await queue_behind_a_blocker(run, batcher, [row(i) for i in range(8)])
        # Not the data's fault: all eight shared the batch, all eight get the 500, and the
        # backend ran that batch exactly once.
        assert all(isinstance(r, InternalError) and http_status(r) == 500 for r in results)
        assert run.batches == [1, 8]
        assert [(r.requests, r.ok, r.retry) for r in records] == [
            (1, True, False),
            (8, False, False),
        ]
        await batcher.close()

    asyncio.run(main())


def test_bisection_is_bounded_when_every_request_is_bad() -> None:
    async def main() -> None:
        run = Recorder(error=InvalidArgument)
        run.fail_on = 7.0
        batcher = await make(run, policy(max_batch_size=32))
        results = await queue_behind_a_blocker(run, batcher, [row(7.0) for _ in range(8)])
        assert all(isinstance(r, InvalidArgument) for r in results)
        # 1 blocker run + a full binary split of 8: 1 + 2 + 4 + 8 = 15 runs, no more.
        assert len(run.batches) == 1 + 15
        await batcher.close()

    asyncio.run(main())


def test_queue_full_rejects_with_unavailable() -> None:
    async def main() -> None:
        run = Recorder()
        run.gate = threading.Event()
        pol = policy(max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=2))
        batcher = await make(run, pol)
        running = asyncio.ensure_future(batcher.submit(row(0)))
        await asyncio.sleep(0.02)
        queued = [asyncio.ensure_future(batcher.submit(row(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="queue is full"):
            await batcher.submit(row(3))
        run.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    asyncio.run(main())


def test_timeout_rejects_a_waiting_request() -> None:
    async def main() -> None:
        run = Recorder()
        run.gate = threading.Event()
        pol = policy(
            max_batch_size=1,
            default_queue_policy=QueuePolicy(allow_timeout_override=True),
        )
        batcher = await make(run, pol)
        running = asyncio.ensure_future(batcher.submit(row(0)))
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        with pytest.raises(RequestTimeout):
            await batcher.submit(row(1), timeout_us=20_000)
        assert time.perf_counter() - t0 < 1.0
        run.gate.set()
        await running
        assert batcher.pending == 0
        await batcher.close()

    asyncio.run(main())


def test_higher_priority_runs_first() -> None:
    async def main() -> None:
        order: list[float] = []
        run = Recorder()
        run.gate = threading.Event()
        inner = run.__call__

        def recording(instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            order.append(float(inputs["x"][0, 0]))
            return inner(instance, inputs)

        pol = policy(max_batch_size=1, priority_levels=2, default_priority_level=2)
        batcher = Batcher(recording, pol, ThreadPoolExecutor(1), name="p")
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(row(0)))
        await asyncio.sleep(0.02)
        low = asyncio.ensure_future(batcher.submit(row(1)))
        high = asyncio.ensure_future(batcher.submit(row(2), priority=1))
        await asyncio.sleep(0)
        run.gate.set()
        await asyncio.gather(first, low, high)
        assert order == [0.0, 2.0, 1.0]
        with pytest.raises(InvalidArgument, match="priority 5"):
            await batcher.submit(row(3), priority=5)
        await batcher.close()

    asyncio.run(main())


def test_several_instances_run_in_parallel() -> None:
    # Each batch waits at a 4-party barrier: only four instances running at once get through.
    barrier = threading.Barrier(4, timeout=10)

    def run(instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        barrier.wait()
        return {"y": inputs["x"] * 2}

    async def main() -> None:
        pol = policy(max_batch_size=1, instances=4)
        batcher = Batcher(run, pol, ThreadPoolExecutor(max_workers=4), name="par")
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(row(i)) for i in range(4)))
        assert [float(out["y"][0, 0]) for out, _, _ in results] == [0.0, 2.0, 4.0, 6.0]
        await batcher.close()

    asyncio.run(main())


def test_records_are_emitted_per_batch() -> None:
    async def main() -> None:
        records: list[BatchRecord] = []
        run = Recorder(delay=0.01)
        batcher = await make(run, policy(max_batch_size=8), records)
        await asyncio.gather(*(batcher.submit(row(i)) for i in range(10)))
        assert sum(r.requests for r in records) == 10
        assert sum(r.batch_size for r in records) == 10
        assert all(len(r.queue_ns) == r.requests and r.ok for r in records)
        await batcher.close()

    asyncio.run(main())


def test_close_drains_then_rejects() -> None:
    async def main() -> None:
        run = Recorder(delay=0.02)
        batcher = await make(run, policy(max_batch_size=2))
        inflight = [asyncio.ensure_future(batcher.submit(row(i))) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.close(grace_s=5)
        assert all(f.done() and not f.exception() for f in inflight)
        with pytest.raises(Unavailable):
            await batcher.submit(row(9))

    asyncio.run(main())
