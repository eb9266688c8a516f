"""System shared memory vs binary tensor data: a 4 MiB FP32 tensor in and out of an identity model.

Usage::

    python bench/shm_bench.py [--seconds 5] [--clients 4] [--mib 4] [--json]

Starts ``forwardpass serve --allow-client-shm`` on a repository holding one ONNX ``Identity``
model (FP32 input ``x`` [1, N] → output ``y``), then drives it with ``--clients`` concurrent
``tritonclient.http`` clients (threads, one connection each) in two modes, one after the
other in the same run:

- ``binary``: the input travels in the request body and the output in the response body
  (binary tensor data extension);
- ``shm``: each client registers an input and an output region once; every request names
  them, so the body carries only the JSON header and the server reads and writes the regions.

Reports requests/s and latency (p50, p99) per mode and the shm/binary ratio. The server is
pinned to core 0 and the clients to core 1 where the machine has two cores (see common.py).
Every answer is checked (the output must equal the input).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from common import CLIENT_CORE, forwardpass_server, serving
from onnx import TensorProto, helper


def write_repository(root: Path, elements: int) -> None:
    """``identity``: y = Identity(x), x and y FP32 [1, elements], no batching."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, elements])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = root / "identity"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "config.pbtxt").write_text(
        'name: "identity"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1, {elements} ] }} ]\n'
        f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1, {elements} ] }} ]\n'
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Worker:
    """One client connection and, in shm mode, its two regions."""

    def __init__(self, url: str, mode: str, data: np.ndarray, index: int) -> None:
        import tritonclient.http as httpclient
        import tritonclient.utils.shared_memory as shm

        self.client = httpclient.InferenceServerClient(url, connection_timeout=60)
        self.mode = mode
        self.data = data
        self.latencies: list[float] = []
        self.error: str | None = None
        self.handles: list[Any] = []
        self.names: tuple[str, ...] = ()
        self.item = httpclient.InferInput("x", list(data.shape), "FP32")
        self.output = httpclient.InferRequestedOutput("y", binary_data=True)
        if mode == "binary":
            self.item.set_data_from_numpy(data, binary_data=True)
            return
        tag = uuid.uuid4().hex[:10]
        names = self.names = (f"in{index}_{tag}", f"out{index}_{tag}")
        for name in names:
            key = f"/fp_bench_{name}"
            handle = shm.create_shared_memory_region(name, key, data.nbytes)
            self.handles.append(handle)
            self.client.register_system_shared_memory(name, key, data.nbytes)
        shm.set_shared_memory_region(self.handles[0], [data])
        self.item.set_shared_memory(names[0], data.nbytes)
        self.output.set_shared_memory(names[1], data.nbytes)

    def result(self, answer: Any) -> np.ndarray:
        if self.mode == "binary":
            return np.asarray(answer.as_numpy("y"))
        import tritonclient.utils.shared_memory as shm

        return np.asarray(
            shm.get_contents_as_numpy(self.handles[1], np.float32, list(self.data.shape))
        )

    def run(self, deadline: float, check: bool) -> None:
        try:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                answer = self.client.infer("identity", [self.item], outputs=[self.output])
                # The client has the output in hand either way: a view of the response body,
                # or a view of its own shared memory.
                out = self.result(answer)
                self.latencies.append(time.perf_counter() - began)
                if check:
                    if not np.array_equal(out, self.data):
                        self.error = "output differs from input"
                        return
                    check = False
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for name in self.names:  # only this client's: the others are still running
            self.client.unregister_system_shared_memory(name)
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)
        self.client.close()


def measure(url: str, mode: str, data: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    # tritonclient.http runs on gevent: each client must live in the thread that uses it.
    ready = threading.Barrier(clients + 1)
    start: list[float] = []
    workers: list[Worker | None] = [None] * clients
    failures: list[str] = []

    def role(index: int) -> None:
        worker = None
        try:
            worker = Worker(url, mode, data, index)
            workers[index] = worker
            worker.run(time.perf_counter() + 0.2, check=True)  # warm-up, answer checked
            worker.latencies.clear()
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        ready.wait()
        try:
            if worker is not None and not failures:
                worker.run(start[0] + seconds, check=True)
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=role, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.append(time.perf_counter())
    ready.wait()
    start[0] = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start[0]
    errors = failures + [w.error for w in workers if w is not None and w.error]
    if errors:
        raise RuntimeError(f"{mode}: {errors[0]}")
    latencies = np.array([t for w in workers if w is not None for t in w.latencies]) * 1e3
    return {
        "mode": mode,
        "requests": int(latencies.size),
        "requests_per_s": latencies.size / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per mode")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--mib", type=float, default=4.0, help="tensor size in MiB")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    elements = int(args.mib * (1 << 20)) // 4
    data = np.random.default_rng(0).standard_normal((1, elements)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        write_repository(root, elements)
        port = free_port()
        cmd = [*forwardpass_server(root, port), "--allow-client-shm"]
        with serving(cmd, f"http://127.0.0.1:{port}/v2/health/ready"):
            _pin_self()
            url = f"127.0.0.1:{port}"
            results = [
                measure(url, mode, data, args.clients, args.seconds) for mode in ("binary", "shm")
            ]
    binary, shared = results
    ratio = shared["requests_per_s"] / binary["requests_per_s"]
    summary = {
        "tensor_mib": args.mib,
        "clients": args.clients,
        "seconds": args.seconds,
        "results": results,
        "shm_over_binary": ratio,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.mib:g} MiB FP32 in and out, identity model, {args.clients} clients")
        print(f"{'mode':8} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'requests':>9}")
        for r in results:
            print(
                f"{r['mode']:8} {r['requests_per_s']:9.1f} {r['p50_ms']:9.2f} "
                f"{r['p99_ms']:9.2f} {r['requests']:9d}"
            )
        print(f"shm / binary: {ratio:.2f}x")
    return 0


def _pin_self() -> None:
    """Keep the clients off the server's core, as the other benchmarks do."""
    import os

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(CLIENT_CORE)})


if __name__ == "__main__":
    sys.exit(main())
