"""The ingress's Coalescer: requests that arrive together share one handle call, and each
still gets its own answer (forwardpass.ray.calls; a fake handle, no cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray")
from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, Unavailable
from forwardpass.ray.calls import Coalescer
from forwardpass.types import InferRequest, InferResponse, Tensor

# Importing ray.serve warns about its own use of pydantic.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class FakeHandle:
    """``handle.infer_batch.remote(requests)``: answers after a short delay, recording calls."""

    def __init__(self, fail_call: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail_call = fail_call
        self.infer_batch = self

    def remote(self, requests: list[InferRequest]) -> Any:
        self.calls.append([r.id for r in requests])
        return self._answer(requests)

    async def _answer(self, requests: list[InferRequest]) -> list[Any]:
        await asyncio.sleep(0.02)
        if self.fail_call:
            raise Unavailable("replica gone")
        return [
            InvalidArgument(f"bad {r.id}")
            if r.id == "bad"
            else InferResponse("m", "1", [Tensor("y", DataType.FP32, r.inputs[0].data + 1)], r.id)
            for r in requests
        ]


def _request(rid: str) -> InferRequest:
    return InferRequest("m", [Tensor("x", DataType.FP32, np.zeros((1, 2), np.float32))], id=rid)


def test_requests_waiting_on_a_busy_window_leave_together() -> None:
    handle = FakeHandle()
    coalescer = Coalescer(handle, "m", window=1)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(coalescer.infer(_request(str(i))) for i in range(5)),
            coalescer.infer(_request("bad")),
            return_exceptions=True,
        )

    results = asyncio.run(run())
    # The first goes at once; the five that queued behind it share the second call.
    assert handle.calls == [["0"], ["1", "2", "3", "4", "bad"]]
    assert [r.id for r in results[:5]] == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(results[0].outputs[0].data, np.ones((1, 2)))
    assert isinstance(results[5], InvalidArgument) and results[5].message == "bad bad"


def test_a_failed_call_fails_its_requests_only_and_max_items_splits() -> None:
    handle = FakeHandle(fail_call=True)
    coalescer = Coalescer(handle, "m", window=1, max_items=2)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(coalescer.infer(_request(str(i))) for i in range(5)), return_exceptions=True
        )

    results = asyncio.run(run())
    assert handle.calls == [["0"], ["1", "2"], ["3", "4"]]
    assert all(isinstance(r, Unavailable) and r.message == "replica gone" for r in results)
    assert len({id(r) for r in results}) == 5  # one fresh error per request
