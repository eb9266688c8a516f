"""The batcher's inline mode: fast batches of lone requests run on the event loop's thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from forwardpass.errors import InvalidArgument
from forwardpass.scheduling.batcher import Batcher, BatcherPolicy

BOUND_NS = 50_000_000  # 50 ms: generous, so a busy test machine still counts as "fast"


class ThreadRecorder:
    """Doubles its input; records which thread ran each batch and its size."""

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.threads: list[int] = []
        self.sizes: list[int] = []

    def __call__(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.threads.append(threading.get_ident())
        self.sizes.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise InvalidArgument(f"bad value {self.fail_on}")
        return {"y": x * 2}


def make(run: ThreadRecorder, inline_ns: int = BOUND_NS, instances: int = 1) -> Batcher:
    policy = BatcherPolicy(max_batch_size=8, merge=True, instances=instances)
    batcher = Batcher(
        run, policy, ThreadPoolExecutor(max_workers=instances), name="m", inline_ns=inline_ns
    )
    batcher.start()
    return batcher


def row(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), value, dtype=np.float32)}


def test_fast_lone_batches_run_on_the_loop_after_a_first_measured_run() -> None:
    async def main() -> None:
        run = ThreadRecorder()
        batcher = make(run)
        for i in range(5):
            out, _q, _c = await batcher.submit(row(i))
            assert np.all(out["y"] == 2 * i)
        loop_thread = threading.get_ident()
        assert run.threads[0] != loop_thread, "the first run of a size must be measured off-loop"
        assert run.threads[1:] == [loop_thread] * 4
        await batcher.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("inline_ns", "instances", "delay"),
    [(0, 1, 0.0), (BOUND_NS, 2, 0.0), (1_000_000, 1, 0.01)],
    ids=["off", "two-instances", "slow-batches"],
)
def test_inline_never_runs_when_off_with_instances_or_for_slow_batches(
    inline_ns: int, instances: int, delay: float
) -> None:
    async def main() -> None:
        run = ThreadRecorder(delay=delay)
        batcher = make(run, inline_ns=inline_ns, instances=instances)
        for i in range(20):  # past a probe's period (a 10 ms run is 10x a 1 ms bound)
            await batcher.submit(row(i))
        assert threading.get_ident() not in run.threads
        await batcher.close()

    asyncio.run(main())


def test_merged_batches_keep_the_executor() -> None:
    """Where requests do batch, the hop's wait lets the next batch grow: no inline runs."""

    async def main() -> None:
        run = ThreadRecorder()
        batcher = make(run)
        for _ in range(30):
            await asyncio.gather(*(batcher.submit(row(i)) for i in range(8)))
        loop_thread = threading.get_ident()
        assert max(run.sizes) > 1
        merged = [t for t, s in zip(run.threads, run.sizes, strict=True) if s > 1]
        assert loop_thread not in merged[-5:]
        await batcher.close()

    asyncio.run(main())


def test_inline_failures_reach_only_their_request() -> None:
    """The guarantees hold inline: a data error fails its own request, the rest succeed."""

    async def main() -> None:
        run = ThreadRecorder(fail_on=3.0)
        batcher = make(run)
        await batcher.submit(row(0))  # measured: later lone runs are inline
        for i in range(1, 6):
            if i == 3:
                with pytest.raises(InvalidArgument, match="bad value"):
                    await batcher.submit(row(i))
            else:
                out, _q, _c = await batcher.submit(row(i))
                assert np.all(out["y"] == 2 * i)
        assert run.threads[-1] == threading.get_ident()
        assert batcher.pending == 0
        await batcher.close()

    asyncio.run(main())


def test_only_backends_that_never_wait_on_the_loop_are_inline_safe() -> None:
    from forwardpass.runtime.base import Backend
    from forwardpass.runtime.onnx import OnnxRuntimeBackend
    from forwardpass.runtime.python import PythonBackend

    assert OnnxRuntimeBackend.inline_safe
    assert not PythonBackend.inline_safe  # BLS calls wait on the loop: inline would deadlock
    assert not Backend.inline_safe
