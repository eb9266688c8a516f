"""System shared memory under ``serve --workers N``: two workers' registries, each mapping the
object itself (here each has its own shared memory folder, so a key can be missing on one),
kept in step through their control channels: all or none, journaled for a restarted worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from forwardpass.cluster.peers import Call, Peers
from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.protocol.shared_memory import RegionStatus, SharedMemoryRegistry


class _Engine:
    """The control channel needs an engine; these tests make no model calls."""


def _object(root: Path, key: str, size: int) -> None:
    root.mkdir(exist_ok=True)
    (root / key.lstrip("/")).write_bytes(bytes(range(size)))


async def _worker(index: int, folder: Path, root: Path) -> tuple[Peers, SharedMemoryRegistry]:
    peers, registry = Peers(index, 2, folder), SharedMemoryRegistry(root)
    peers.shared_memory, registry.cluster = registry, peers  # as serving.Server wires them
    await peers.start(_Engine(), None, None)  # type: ignore[arg-type]
    return peers, registry


def test_a_region_is_registered_and_unregistered_on_every_worker(tmp_path: Path) -> None:
    _object(tmp_path / "a", "/in", 64)
    _object(tmp_path / "b", "/in", 64)

    async def main() -> None:
        first, one = await _worker(0, tmp_path, tmp_path / "a")
        second, two = await _worker(1, tmp_path, tmp_path / "b")
        await one.register_shared("r", "/in", 8, 16)
        await two.register_shared("s", "/in", 0, 64)  # through the other worker
        expected = [RegionStatus("r", "/in", 8, 16), RegionStatus("s", "/in", 0, 64)]
        assert one.status() == two.status() == expected
        # Each worker maps it itself: a lease reads the object's bytes, no copy between them.
        with two.leases() as leases:
            assert bytes(leases._region("r").window(0, 4)) == bytes([8, 9, 10, 11])
        with pytest.raises(InvalidArgument, match="already in manager"):
            await two.register_shared("r", "/in", 0, 8)
        assert one.status() == two.status() == expected

        await two.unregister_shared("r")
        for registry in (one, two):
            with pytest.raises(NotFound, match="'r'"):
                registry.status("r")
        assert first.journal == second.journal == [Call("shm_register", ("s", "/in", 0, 64))]
        await one.unregister_shared()  # all of them
        assert one.status() == two.status() == []
        assert first.journal == second.journal == []
        await first.stop()
        await second.stop()

    asyncio.run(main())


def test_a_registration_a_sibling_refuses_is_on_no_worker(tmp_path: Path) -> None:
    _object(tmp_path / "a", "/only-here", 64)
    (tmp_path / "b").mkdir()  # the key does not exist for worker 1

    async def main() -> None:
        first, one = await _worker(0, tmp_path, tmp_path / "a")
        second, two = await _worker(1, tmp_path, tmp_path / "b")
        with pytest.raises(InvalidArgument, match=r"registered by no worker.*worker 1: Unable"):
            await one.register_shared("r", "/only-here", 0, 64)
        assert one.status() == two.status() == []
        assert first.journal == [] and second.journal == []
        # Refused here first: the sibling is never asked.
        with pytest.raises(InvalidArgument, match="Unable to open"):
            await two.register_shared("r", "/only-here", 0, 64)
        assert one.status() == two.status() == []
        await first.stop()
        await second.stop()

    asyncio.run(main())


def test_a_sibling_already_holding_the_name_refuses_and_keeps_its_own(tmp_path: Path) -> None:
    _object(tmp_path / "a", "/k", 32)
    _object(tmp_path / "b", "/k", 32)

    async def main() -> None:
        first, one = await _worker(0, tmp_path, tmp_path / "a")
        second, two = await _worker(1, tmp_path, tmp_path / "b")
        two.register("r", "/k", 0, 8)  # the workers differ (as after a lost replay)
        with pytest.raises(InvalidArgument, match="worker 1: shared memory region 'r' already"):
            await one.register_shared("r", "/k", 0, 32)
        assert one.status() == []
        assert two.status() == [RegionStatus("r", "/k", 0, 8)]  # its own, not undone
        await first.stop()
        await second.stop()

    asyncio.run(main())


def test_a_restarted_worker_maps_the_registered_regions_again(tmp_path: Path) -> None:
    _object(tmp_path / "a", "/in", 64)
    _object(tmp_path / "b", "/in", 64)

    async def main() -> None:
        first, one = await _worker(0, tmp_path, tmp_path / "a")
        second, two = await _worker(1, tmp_path, tmp_path / "b")
        await one.register_shared("r", "/in", 0, 64)
        await one.register_shared("gone", "/in", 0, 8)
        await two.unregister_shared("gone")
        await second.stop()  # worker 1 dies and comes back with an empty registry
        two.unregister()
        reborn, fresh = await _worker(1, tmp_path, tmp_path / "b")
        assert fresh.status() == one.status() == [RegionStatus("r", "/in", 0, 64)]
        with fresh.leases() as leases:
            assert bytes(leases._region("r").window(60, 4)) == bytes([60, 61, 62, 63])
        await first.stop()
        await reborn.stop()

    asyncio.run(main())


def test_a_sibling_that_is_down_is_skipped_and_catches_up(tmp_path: Path) -> None:
    _object(tmp_path / "a", "/in", 16)
    _object(tmp_path / "b", "/in", 16)

    async def main() -> None:
        first, one = await _worker(0, tmp_path, tmp_path / "a")
        second, _ = await _worker(1, tmp_path, tmp_path / "b")
        await second.stop()
        await one.register_shared("r", "/in", 0, 16)  # nobody to tell now: fine
        reborn, fresh = await _worker(1, tmp_path, tmp_path / "b")
        assert fresh.status() == [RegionStatus("r", "/in", 0, 16)]
        await first.stop()
        await reborn.stop()

    asyncio.run(main())
