"""The ceiling a server can approach: a bare ``InferenceSession.run`` loop, no server at all.

Usage::

    python bench/raw_ort.py MODEL.onnx [--batch 1,8,32] [--seconds 3] [--threads 1] [--json]

For each batch size it feeds random inputs (variable leading dimension = the batch, any other
variable dimension = 1 unless ``--shape name:d1,d2`` says otherwise) and reports samples/s and
the per-call latency (median and p99, microseconds). Compare a server's throughput on the same
model against these figures to see what the protocol, queueing and batching cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for item in items:
        name, _, dims = item.partition(":")
        shapes[name] = [int(d) for d in dims.split(",") if d]
    return shapes


def make_feed(session: Any, batch: int, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Random inputs of the session's types; the first variable dim takes ``batch``."""
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise SystemExit(f"input {arg.name}: unsupported type {arg.type}")
        dims = list(arg.shape)
        variable = [i for i, d in enumerate(dims) if not isinstance(d, int) or d < 0]
        override = list(shapes.get(arg.name, []))
        shape: list[int] = []
        for i, d in enumerate(dims):
            if i == 0 and i in variable:  # the batch dimension
                shape.append(batch)
            elif i in variable:
                shape.append(override.pop(0) if override else 1)
            else:
                shape.append(int(d))
        if np.issubdtype(dtype, np.floating):
            feed[arg.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype is np.bool_:
            feed[arg.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feed[arg.name] = rng.integers(0, 10, shape).astype(dtype)
    return feed


def measure(session: Any, feed: dict[str, np.ndarray], seconds: float) -> list[float]:
    """Per-call wall times (seconds) of back-to-back ``run`` calls for ``seconds``."""
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    run = session.run
    clock = time.perf_counter
    deadline = clock() + seconds
    while True:
        start = clock()
        run(None, feed)
        end = clock()
        times.append(end - start)
        if end >= deadline and len(times) >= 5:
            return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bare onnxruntime throughput per batch size.")
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    shapes = _parse_shapes(args.shape)
    batches = [int(b) for b in args.batch.split(",") if b]
    variable_batch = any(
        arg.shape and (not isinstance(arg.shape[0], int) or arg.shape[0] < 0)
        for arg in session.get_inputs()
    )

    if not args.json:
        print(f"{args.model}  onnxruntime {ort.__version__}  intra-op threads {args.threads}")
        print(
            f"{'batch':>6} {'samples/s':>12} {'us/call p50':>12} {'us/call p99':>12} {'calls':>8}"
        )
    for batch in batches:
        if batch != 1 and not variable_batch:
            print(f"skip batch {batch}: the model has a fixed leading dimension", file=sys.stderr)
            continue
        times = measure(session, make_feed(session, batch, shapes), args.seconds)
        p50 = statistics.median(times)
        p99 = float(np.percentile(times, 99))
        rate = batch * len(times) / sum(times)
        row = {
            "model": str(args.model),
            "batch": batch,
            "samples_per_s": round(rate, 1),
            "us_per_call_p50": round(p50 * 1e6, 1),
            "us_per_call_p99": round(p99 * 1e6, 1),
            "calls": len(times),
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{batch:>6} {rate:>12,.0f} {p50 * 1e6:>12,.1f} {p99 * 1e6:>12,.1f} {len(times):>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
