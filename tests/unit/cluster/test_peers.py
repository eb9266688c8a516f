"""Two workers' control channels in one event loop, with stand-in engines: a load is made on
every worker or on none, and a restarted worker replays the journal of its sibling."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from forwardpass.cluster.peers import Call, Peers
from forwardpass.errors import InvalidModelConfig
from forwardpass.results import ModelStatistics


class _Table:
    def __init__(self, fail: bool = False) -> None:
        self.loaded: dict[str, Any] = {}
        self.fail = fail

    async def load(self, name: str, override: Any = None, files: Any = None) -> None:
        if self.fail:
            raise InvalidModelConfig(f"model {name}: cannot load here")
        self.loaded[name] = override

    async def unload(self, name: str) -> None:
        self.loaded.pop(name, None)


class _Engine:
    def __init__(self, fail: bool = False, served: int = 0) -> None:
        self.table = _Table(fail)
        self.served = served

    def stats(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        return [ModelStatistics("m", "1", inference_count=self.served)]


async def _pair(folder: Path, fail_second: bool = False) -> tuple[Peers, Peers, _Engine, _Engine]:
    first, second = Peers(0, 2, folder), Peers(1, 2, folder)
    one, two = _Engine(served=3), _Engine(fail=fail_second, served=4)
    await first.start(one, None, None)  # type: ignore[arg-type]
    await second.start(two, None, None)  # type: ignore[arg-type]
    return first, second, one, two


def test_a_load_reaches_every_worker_and_a_restart_replays_it(tmp_path: Path) -> None:
    async def main() -> None:
        first, second, one, two = await _pair(tmp_path)
        await one.table.load("m", {"max_batch_size": 4})
        await first.share_load("m", {"max_batch_size": 4}, None, was_serving=False)
        assert two.table.loaded == {"m": {"max_batch_size": 4}}
        merged = await first.statistics(one.stats(), "m", "")
        assert [s.inference_count for s in merged] == [7]

        await second.stop()  # worker 1 dies and comes back with a fresh engine
        reborn, fresh = Peers(1, 2, tmp_path), _Engine()
        await reborn.start(fresh, None, None)  # type: ignore[arg-type]
        assert fresh.table.loaded == {"m": {"max_batch_size": 4}}
        assert reborn.journal == [Call("load", ("m", {"max_batch_size": 4}, None))]
        await first.stop()
        await reborn.stop()

    asyncio.run(main())


def test_a_load_one_worker_refuses_is_undone_on_the_others(tmp_path: Path) -> None:
    async def main() -> None:
        first, second, one, two = await _pair(tmp_path, fail_second=True)
        await one.table.load("m")
        with pytest.raises(InvalidModelConfig, match=r"loaded by no worker.*worker 1: model m"):
            await first.share_load("m", None, None, was_serving=False)
        assert one.table.loaded == {} and two.table.loaded == {}
        assert first.journal == [Call("unload", ("m",))]
        await first.stop()
        await second.stop()

    asyncio.run(main())


def test_a_sibling_that_is_down_is_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        first, second, one, _ = await _pair(tmp_path)
        await second.stop()
        await first.share_load("m", None, None, was_serving=False)  # nobody to tell: fine
        assert await first.statistics(one.stats(), "", "") == one.stats()
        await first.stop()

    asyncio.run(main())
