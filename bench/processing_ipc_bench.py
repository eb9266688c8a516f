"""What it costs to bring one pre-processed image back from a processing worker.

A worker process answers each small request with a 1×3×224×224 float32 tensor (EfficientNet's
input, 602 112 bytes), three ways, in one run:

1. **arena**: :mod:`forwardpass.runtime.ipc` (what the processing pool uses): the worker copies
   the tensor into a shared-memory ring, the server copies it out; a datagram carries offsets;
2. **arena-view**: the same, but the server keeps a view into the ring instead of copying (the
   floor of the shared-memory path: what the copy costs on top);
3. **pickle5**: a ``multiprocessing`` connection, the array pickled with protocol 5 and its
   buffer sent out of band (``send_bytes`` of the pickle, then of the raw buffer), so the bytes
   cross a socket instead of shared memory.

    python bench/processing_ipc_bench.py [--count 2000]

Each figure is the median round trip in microseconds, request to received tensor.
"""

from __future__ import annotations

import argparse
import json
import pickle
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLIENT_CORE, SERVER_CORE, pinned  # a script beside its helpers

SHAPE = (1, 3, 224, 224)


def _tensor() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def child_arena(fds: list[int]) -> None:
    from forwardpass.datatypes import DataType
    from forwardpass.runtime import ipc

    channel = ipc.connect(*fds)
    out = {"input": (DataType.FP32, _tensor())}
    while True:
        try:
            message, _ = channel.recv()
        except ipc.ChannelClosed:
            return
        if message.get("op") == "exit":
            return
        channel.send({"op": "done"}, out)


def child_pickle(fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    tensor = _tensor()
    while True:
        try:
            request = conn.recv_bytes()
        except EOFError:
            return
        if request == b"exit":
            return
        buffers: list[pickle.PickleBuffer] = []
        head = pickle.dumps(tensor, protocol=5, buffer_callback=buffers.append)
        conn.send_bytes(head)
        for buffer in buffers:
            conn.send_bytes(buffer.raw())


def measure_arena(count: int, copy: bool) -> float:
    from forwardpass.runtime import ipc

    channel, theirs, to_child, from_child = ipc.channel_pair()
    fds = [theirs.fileno(), to_child.fd, to_child.size, from_child.fd, from_child.size]
    argv = [sys.executable, __file__, "--role", "arena", *map(str, fds)]
    proc = subprocess.Popen(
        pinned(CLIENT_CORE, *argv), pass_fds=[theirs.fileno(), to_child.fd, from_child.fd]
    )
    theirs.close()
    times = []
    try:
        for i in range(count + 50):
            start = time.perf_counter()
            if copy:
                channel.send({"op": "run"})
                _, tensors = channel.recv()
                tensor = tensors["input"]
            else:
                channel.send({"op": "run"})
                tensor = _recv_view(channel)
            assert tensor.shape == SHAPE
            if i >= 50:
                times.append(time.perf_counter() - start)
        channel.send({"op": "exit"})
    finally:
        proc.wait(10)
    return statistics.median(times) * 1e6


def _recv_view(channel: object) -> np.ndarray:
    """A message's tensor as a view into the arena (not copied): the shared-memory floor."""
    from forwardpass.runtime.ipc import Channel

    assert isinstance(channel, Channel)
    data = channel.sock.recv(1 << 20)
    message = json.loads(data)
    _name, _datatype, shape, pos, n = message["tensors"][0]
    view = np.frombuffer(channel.inp.map, np.float32, n // 4, pos).reshape(shape)
    channel.inp.mark_consumed(int(message["end"]))
    return view


def measure_pickle(count: int) -> float:
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    argv = [sys.executable, __file__, "--role", "pickle", str(theirs.fileno())]
    proc = subprocess.Popen(pinned(CLIENT_CORE, *argv), pass_fds=[theirs.fileno()])
    theirs.close()
    conn = Connection(ours.detach())
    times = []
    try:
        for i in range(count + 50):
            start = time.perf_counter()
            conn.send_bytes(b"run")
            head = conn.recv_bytes()
            tensor = pickle.loads(head, buffers=[conn.recv_bytes()])
            assert tensor.shape == SHAPE
            if i >= 50:
                times.append(time.perf_counter() - start)
        conn.send_bytes(b"exit")
    finally:
        proc.wait(10)
    return statistics.median(times) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--role", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        kind, *rest = args.role
        if kind == "arena":
            child_arena([int(x) for x in rest])
        else:
            child_pickle(int(rest[0]))
        return 0
    if not args.pinned:
        # The measuring side on the server core, the worker on the other (as the pool runs).
        argv = [sys.executable, __file__, "--count", str(args.count), "--pinned"]
        return subprocess.call(pinned(SERVER_CORE, *argv))
    results = {
        "arena_us": measure_arena(args.count, copy=True),
        "arena_view_us": measure_arena(args.count, copy=False),
        "pickle5_us": measure_pickle(args.count),
    }
    for name, value in results.items():
        print(f"{name:<16} {value:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
