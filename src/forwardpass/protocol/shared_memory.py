"""System shared memory (Triton's ``system_shared_memory`` extension), free of any wire.

A client creates a POSIX shared memory object (``shm_open``: the file ``/dev/shm/<key>``),
registers a window of it by name (key, offset, byte size), and then names that region in the
parameters of inference inputs and outputs instead of sending the tensor's bytes. HTTP (and
later gRPC) adapters call this module; it knows no route, body or status code.

The file is opened and ``mmap``-ed directly, never through ``multiprocessing.shared_memory``:
Python's resource tracker would otherwise unlink, at exit, an object this process did not
create. The map always starts at file offset 0 (``mmap`` offsets must be page-aligned; a
region's offset need not be) and covers ``offset + byte_size`` bytes, bounded by the file's
real size.

Lifetime. Each request takes its regions through :class:`RegionLeases`, which counts the
request as a user of every region it touches. Unregistering a region removes its name at
once (new requests cannot find it), but its mapping is closed only when the last request using
it has finished, so a request in flight completes on the mapping it holds. Arrays decoded from
a region are read-only views of the mapping; if one outlives its request (a monitor kept it),
``mmap.close`` refuses with ``BufferError`` and the mapping is left for the garbage collector
to unmap when the last view goes: never a dangling pointer.

One hazard remains, as in Triton: a client that shrinks (``ftruncate``) an object the server
has mapped makes reads past the new end fault. Client shared memory is therefore off unless
the operator enables it (``--allow-client-shm``); it trusts the processes of the same host.

Worker processes (``serve --workers N``). Each worker has its own registry, maps the object
itself (it is a file every worker can open) and counts its own leases, so the zero-copy path
stays inside one process. What the client sees is one registry: :meth:`register_shared` and
:meth:`unregister_shared` make the change here and then on every sibling through
:attr:`SharedMemoryRegistry.cluster` (a registration is all or none), and the siblings journal
it, so a restarted worker maps the same regions; a status therefore answers the same from every
worker. A restarted worker re-opens each key; one the client has unlinked since is lost to it
(logged), as it would be to a restarted Triton.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Protocol

import numpy as np

from forwardpass.datatypes import DataType, serialize_bytes_tensor
from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.protocol.binary import array_from_binary

__all__ = ["RegionCluster", "RegionLeases", "RegionStatus", "SharedMemoryRegistry"]

#: Where ``shm_open`` keeps POSIX shared memory objects on Linux.
SHM_ROOT = Path("/dev/shm")
#: Offsets and sizes travel as int64 (gRPC) / uint64 (Triton's JSON); beyond this a size
#: cannot describe real memory, and refusing it early keeps every sum in range.
MAX_SIZE = 2**63 - 1


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """One registered region, as Triton's status reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """A registered region and its mapping; users are counted under the registry's lock."""

    __slots__ = ("byte_size", "key", "map", "name", "offset", "retired", "users", "view")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, mapped: mmap.mmap):
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.map: mmap.mmap | None = mapped
        # The region's own bytes: a window of the mapping, so bounds are checked once here.
        self.view: memoryview | None = memoryview(mapped)[offset : offset + byte_size]
        self.users = 0
        self.retired = False

    def window(self, offset: int, byte_size: int) -> memoryview:
        """``byte_size`` bytes at ``offset`` into the region, bounds checked (Triton's rules)."""
        if offset >= self.byte_size:
            raise InvalidArgument(
                f"Invalid offset for shared memory region: '{self.name}' (offset {offset}, the "
                f"region has {self.byte_size} bytes)"
            )
        if byte_size > self.byte_size - offset:  # a difference, so no sum can overflow
            raise InvalidArgument(
                f"Invalid offset + byte size for shared memory region: '{self.name}' (offset "
                f"{offset} + byte size {byte_size} exceeds the region's {self.byte_size} bytes)"
            )
        assert self.view is not None  # a leased region is never closed
        return self.view[offset : offset + byte_size]

    def close(self) -> None:
        view, mapped = self.view, self.map
        self.view = self.map = None
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass  # an array still views it: it keeps the mapping alive, see below
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:
                # A NumPy view of the mapping outlived its request. Closing would leave it
                # dangling, so mmap refuses; the view holds the mmap object, which unmaps
                # itself when the last view is garbage-collected.
                pass


class RegionCluster(Protocol):
    """The sibling workers' side of registration (:class:`forwardpass.cluster.peers.Peers`)."""

    async def share_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register on every sibling, or (undoing the siblings that did) on none."""

    async def share_unregister(self, name: str) -> None:
        """Unregister ``name`` (every region when empty) on every sibling."""


class SharedMemoryRegistry:
    """The registered system shared memory regions of one server. Thread-safe."""

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()
        #: The sibling workers under ``serve --workers N`` (set by the server), else ``None``.
        self.cluster: RegionCluster | None = None

    async def register_shared(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """The register API: :meth:`register` here, then on every sibling worker, all or none.

        Checked and mapped here first, so a bad request fails as on a single process and goes
        no further; if a sibling refuses, the region is unregistered here again and the
        sibling's error answers.
        """
        self.register(name, key, offset, byte_size)
        if self.cluster is None:
            return
        try:
            await self.cluster.share_region(name, key, offset, byte_size)
        except BaseException:
            self.unregister(name)
            raise

    async def unregister_shared(self, name: str = "") -> None:
        """The unregister API: :meth:`unregister` here, then on every sibling worker."""
        self.unregister(name)
        if self.cluster is not None:
            await self.cluster.share_unregister(name)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the object ``key`` as region ``name``."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("a shared memory region needs a non-empty name")
        if not isinstance(key, str) or not key:
            raise InvalidArgument(
                f"shared memory region '{name}': 'key' must be a non-empty string"
            )
        for what, value in (("offset", offset), ("byte_size", byte_size)):
            if type(value) is not int or not 0 <= value <= MAX_SIZE:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': '{what}' must be an "
                    f"integer from 0 to {MAX_SIZE}, got {value!r}"
                )
        if byte_size == 0:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': byte_size must be positive"
            )
        path = self._path(name, key)
        with self._lock:
            if name in self._regions:
                # Triton's words (ALREADY_EXISTS, which its HTTP endpoint answers with 400).
                raise InvalidArgument(f"shared memory region '{name}' already in manager")
            mapped = self._map(name, key, path, offset, byte_size)
            self._regions[name] = _Region(name, key, offset, byte_size, mapped)

    def unregister(self, name: str = "") -> None:
        """Unregister region ``name``, or every region when ``name`` is empty.

        An unknown name is not an error (as in Triton). A region some request is still
        using keeps its mapping until that request finishes.
        """
        with self._lock:
            if name:
                region = self._regions.pop(name, None)
                retired = [region] if region is not None else []
            else:
                retired = list(self._regions.values())
                self._regions.clear()
            for region in retired:
                region.retired = True
                if region.users == 0:
                    region.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        """The status of region ``name``, or of every region (in registration order)."""
        with self._lock:
            if not name:
                regions = list(self._regions.values())
            elif name in self._regions:
                regions = [self._regions[name]]
            else:
                raise NotFound(f"Unable to find system shared memory region: '{name}'")
            return [RegionStatus(r.name, r.key, r.offset, r.byte_size) for r in regions]

    def leases(self) -> RegionLeases:
        """A new set of leases for one request; close it when the request is answered."""
        return RegionLeases(self)

    # -- internals ------------------------------------------------------------------------

    def _path(self, name: str, key: str) -> Path:
        # shm_open ignores leading slashes and refuses any other: a key is one file name in
        # /dev/shm, never a path (so "/../etc/passwd" cannot reach outside it).
        base = key.lstrip("/")
        if not base or "/" in base or base in (".", "..") or "\0" in base:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': invalid shared memory key "
                f"'{key}' (a key is '/' followed by a name without '/')"
            )
        return self._root / base

    def _map(self, name: str, key: str, path: Path, offset: int, byte_size: int) -> mmap.mmap:
        try:
            # O_NOFOLLOW as shm_open does: a symlink in /dev/shm must not lead elsewhere.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidArgument(
                f"Unable to open shared memory region: '{key}' ({path}: {exc.strerror})"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': '{key}' is not a "
                    "shared memory object"
                )
            if offset > info.st_size or byte_size > info.st_size - offset:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args (offset "
                    f"{offset} + byte_size {byte_size} exceeds the {info.st_size} bytes of "
                    f"'{key}')"
                )
            try:
                return mmap.mmap(fd, offset + byte_size, mmap.MAP_SHARED)
            except (OSError, ValueError, OverflowError) as exc:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': {exc}"
                ) from None
        finally:
            os.close(fd)  # the mapping stays valid without the descriptor

    def _acquire(self, name: str) -> _Region:
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"Unable to find shared memory region: '{name}'")
            region.users += 1
            return region

    def _release(self, region: _Region) -> None:
        with self._lock:
            region.users -= 1
            if region.users == 0 and region.retired:
                region.close()


class RegionLeases:
    """The regions one request uses: read inputs from them, write outputs into them.

    Each region is leased once, on first use, and stays mapped until :meth:`close`, even if
    it is unregistered meanwhile. Use as a context manager, or call :meth:`close`.
    """

    __slots__ = ("_held", "_registry")

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self._registry = registry
        self._held: dict[str, _Region] = {}

    def __enter__(self) -> RegionLeases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _region(self, name: str) -> _Region:
        region = self._held.get(name)
        if region is None:
            region = self._registry._acquire(name)
            self._held[name] = region
        return region

    def read(
        self,
        tensor: str,
        datatype: DataType,
        shape: tuple[int, ...],
        region: str,
        offset: int,
        byte_size: int,
    ) -> np.ndarray:
        """Input ``tensor`` from ``byte_size`` bytes at ``offset`` of ``region``.

        Fixed-size datatypes give a read-only view of the mapping (no copy) and must fill
        ``byte_size`` exactly; BYTES elements are length-prefixed as in binary tensor data.
        """
        window = self._region(region).window(offset, byte_size)
        if datatype is not DataType.BYTES:
            needed = prod(shape) * datatype.itemsize
            if needed != byte_size:
                raise InvalidArgument(
                    f"input '{tensor}': shared_memory_byte_size is {byte_size} bytes but shape "
                    f"{list(shape)} of {datatype.value} needs {needed}"
                )
        array = array_from_binary(tensor, datatype, shape, window.toreadonly())
        return array

    def reserve(self, tensor: str, region: str, offset: int, byte_size: int) -> None:
        """Check, before inference, that output ``tensor`` has a place in ``region``."""
        self._region(region).window(offset, byte_size)

    def write(
        self,
        tensor: str,
        datatype: DataType,
        array: np.ndarray,
        region: str,
        offset: int,
        byte_size: int,
    ) -> int:
        """Write output ``tensor`` into ``region``; returns the bytes written."""
        window = self._region(region).window(offset, byte_size)
        if datatype is DataType.BYTES:
            blob = serialize_bytes_tensor(array)
            needed = len(blob)
        else:
            needed = array.nbytes
        if needed > byte_size:
            raise InvalidArgument(
                f"shared memory size specified with the request for output '{tensor}' "
                f"({byte_size} bytes) should be at least {needed} bytes to hold the results"
            )
        if datatype is DataType.BYTES:
            window[:needed] = blob
        else:
            # One copy, straight from the array into the client's memory.
            target = np.frombuffer(window, dtype=array.dtype, count=array.size)
            np.copyto(target.reshape(array.shape), array, casting="no")
        return needed

    def close(self) -> None:
        """Release every region this request leased."""
        held, self._held = self._held, {}
        for region in held.values():
            self._registry._release(region)
