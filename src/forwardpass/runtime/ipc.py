"""The channel between the server and one Python-backend stub process.

Small control messages (JSON) travel over a ``SOCK_SEQPACKET`` Unix socket pair, one datagram
per message; tensors never go into them. Each direction has its own shared-memory *arena*, a
ring buffer in an anonymous ``memfd`` that only the two processes map (no name in
``/dev/shm``, so nothing leaks when either side dies). The writer copies a message's tensors
into its arena and sends their offsets; the reader copies them out as it receives the message
and publishes how far it has consumed in the arena's header, so the writer can reuse the space.
A message too large for the ring replaces the arena with a bigger one: the new memfd travels
with that message as ``SCM_RIGHTS``.

Both processes import this module (the stub runs with the server's interpreter).
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType, deserialize_bytes_tensor, serialize_bytes_tensor

__all__ = ["Arena", "Channel", "ChannelClosed", "channel_pair"]

_HEADER = 64  # bytes: [0:8] consumed position, written by the reader
_ALIGN = 64
_MAX_MESSAGE = 16 * 1024 * 1024  # one datagram: control data only, never tensor bytes
_U64 = struct.Struct("<Q")
DEFAULT_ARENA_BYTES = 8 * 1024 * 1024


class ChannelClosed(Exception):
    """The peer closed the channel (exited, crashed or was killed)."""


def _memfd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("forwardpass-arena", 0)
    else:  # pragma: no cover - non-Linux: an unlinked temporary file in the page cache
        import tempfile

        handle = tempfile.TemporaryFile()
        fd = os.dup(handle.fileno())
        handle.close()
    os.ftruncate(fd, size)
    return fd


class Arena:
    """One direction's ring of shared memory (see the module docstring)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.map = mmap.mmap(fd, size)
        self.capacity = size - _HEADER
        #: Writer side: bytes allocated so far (monotonic).
        self.head = 0

    @classmethod
    def create(cls, size: int = DEFAULT_ARENA_BYTES) -> Arena:
        return cls(_memfd(size), size)

    @property
    def consumed(self) -> int:
        return int(_U64.unpack_from(self.map, 0)[0])

    def mark_consumed(self, position: int) -> None:
        _U64.pack_into(self.map, 0, position)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a view is still alive; the mapping goes with it
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def _encode_array(datatype: DataType, array: np.ndarray) -> bytes | memoryview:
    if datatype is DataType.BYTES:
        return serialize_bytes_tensor(array)
    data = np.ascontiguousarray(array)
    return memoryview(data).cast("B") if data.size else b""  # type: ignore[arg-type]


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Channel:
    """One end of the channel: send and receive messages with named tensors.

    ``send`` may be called from any thread; ``recv`` from one reader thread only.
    """

    def __init__(self, sock: socket.socket, out_arena: Arena, in_arena: Arena) -> None:
        self.sock = sock
        self.out = out_arena
        self.inp = in_arena
        self._lock = threading.Lock()
        self.closed = False

    # ------------------------------------------------------------------ sending
    def send(
        self, message: dict[str, Any], tensors: Mapping[str, tuple[DataType, np.ndarray]] = {}
    ) -> None:
        """Send ``message``; ``tensors`` (name → datatype, array) travel through the arena."""
        payloads = [(n, dt, a, _encode_array(dt, a)) for n, (dt, a) in tensors.items()]
        total = sum(_align(len(p)) for *_, p in payloads)
        with self._lock:
            if self.closed:
                raise ChannelClosed("channel is closed")
            fds: list[int] = []
            if total > self.out.capacity:
                # Grow: a new arena the reader switches to when it receives this message.
                size = max(self.out.size * 2, _align(total) * 2 + _HEADER)
                old = self.out
                self.out = Arena.create(size)
                fds = [self.out.fd]
                message = {**message, "arena": size}
                old.close()
            descs = []
            if payloads:
                start = self._reserve(total, fresh=bool(fds))
                offset = start
                for name, datatype, array, payload in payloads:
                    pos = _HEADER + offset % self.out.capacity
                    n = len(payload)
                    if n:
                        self.out.map[pos : pos + n] = payload
                    descs.append([name, datatype.value, list(array.shape), pos, n])
                    offset += _align(n)
                message = {**message, "tensors": descs, "end": offset}
            data = json.dumps(message, separators=(",", ":")).encode()
            if len(data) > _MAX_MESSAGE:
                raise ValueError(f"control message of {len(data)} bytes is too large")
            try:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.send(data)
            except OSError as exc:
                self.closed = True
                raise ChannelClosed(str(exc)) from exc

    def _reserve(self, total: int, fresh: bool) -> int:
        """The ring position of ``total`` contiguous bytes, waiting for the reader if full."""
        arena = self.out
        if fresh:
            arena.head = 0
        head = arena.head
        pos = head % arena.capacity
        if pos + total > arena.capacity:  # no wrap inside a message: skip to the ring's start
            head += arena.capacity - pos
        deadline = time.monotonic() + 60
        while head + total - arena.consumed > arena.capacity:
            if time.monotonic() > deadline:
                raise ChannelClosed("peer stopped reading its shared memory")
            time.sleep(0.0002)
        arena.head = head + total
        return head

    # ------------------------------------------------------------------ receiving
    def recv(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The next message and its tensors (copied out of shared memory)."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_MESSAGE, 4)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        if not data:
            raise ChannelClosed("peer closed the channel")
        message: dict[str, Any] = json.loads(data)
        if fds:
            old = self.inp
            self.inp = Arena(fds[0], int(message["arena"]))
            old.close()
        tensors: dict[str, np.ndarray] = {}
        descs = message.pop("tensors", None)
        if descs:
            view = self.inp.map
            for name, datatype_name, shape, pos, n in descs:
                datatype = DataType(datatype_name)
                count = int(np.prod(shape)) if shape else 1
                if datatype is DataType.BYTES:
                    flat = deserialize_bytes_tensor(view[pos : pos + n], count)
                    tensors[name] = flat.reshape(shape)
                else:
                    array = np.frombuffer(view, datatype.numpy, count, pos) if n else None
                    if array is None:
                        tensors[name] = np.empty(shape, datatype.numpy)
                    else:
                        tensors[name] = array.reshape(shape).copy()
            self.inp.mark_consumed(int(message.pop("end")))
        return message, tensors

    def close(self) -> None:
        with self._lock:
            self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def channel_pair() -> tuple[Channel, socket.socket, Arena, Arena]:
    """The server's end, and what the stub needs to build its own: socket and both arenas
    (the server's outgoing arena is the stub's incoming one and vice versa)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    to_stub = Arena.create()
    from_stub = Arena.create()
    return Channel(ours, to_stub, from_stub), theirs, to_stub, from_stub


def connect(sock_fd: int, in_fd: int, in_size: int, out_fd: int, out_size: int) -> Channel:
    """The stub's end, from the file descriptors it inherited."""
    sock = socket.socket(fileno=sock_fd)
    return Channel(sock, Arena(out_fd, out_size), Arena(in_fd, in_size))
