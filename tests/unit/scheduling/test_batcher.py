"""Batcher behaviour against a plain Python run function (no model, no backend)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from forwardpass.errors import InternalError, InvalidArgument, RequestTimeout, Unavailable
from forwardpass.model_config import DynamicBatching, QueuePolicy
from forwardpass.scheduling.batcher import Batcher, BatcherPolicy, BatchRecord


class Recorder:
    """A run function that doubles its input and remembers every batch it saw."""

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
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
            raise InternalError("backend exploded on purpose")
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


def test_lone_request_does_not_wait_with_zero_delay() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = await make(run, policy(max_batch_size=8))
        t0 = time.perf_counter()
        await batcher.submit(row(1))
        assert time.perf_counter() - t0 < 0.5  # nothing to wait for: no timer, no delay
        await batcher.close()

    asyncio.run(main())


def test_queue_delay_lets_a_batch_fill() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = await make(run, policy(max_batch_size=8, max_queue_delay_microseconds=100_000))
        first = asyncio.ensure_future(batcher.submit(row(1)))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(row(2)))
        await asyncio.gather(first, second)
        assert run.batches == [2]
        await batcher.close()

    asyncio.run(main())


def test_full_batch_dispatches_before_the_delay() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = await make(run, policy(max_batch_size=4, max_queue_delay_microseconds=5_000_000))
        t0 = time.perf_counter()
        await asyncio.gather(*(batcher.submit(row(i)) for i in range(4)))
        assert time.perf_counter() - t0 < 1.0
        assert run.batches == [4]
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


def test_failing_batch_fails_only_its_requests() -> None:
    async def main() -> None:
        run = Recorder(fail_on=13.0)
        batcher = await make(run, policy(max_batch_size=1))
        results = await asyncio.gather(
            *(batcher.submit(row(i)) for i in range(20)), return_exceptions=True
        )
        for i, result in enumerate(results):
            if i == 13:
                assert isinstance(result, InternalError)
                assert "exploded" in result.message
            else:
                assert not isinstance(result, BaseException)
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
