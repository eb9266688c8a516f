"""Response cache: a hit against a miss on the ~5 ms ``compute`` model of ``bench/models.py``.

Usage::

    python bench/cache_bench.py [--seconds 5] [--json]

Builds ``compute`` (batch-1 cost ~5 ms on one thread) with ``response_cache { enable: true }``,
starts ``forwardpass serve --cache-config local,size=64MiB`` pinned to core 0, and drives it
from one ``tritonclient.http`` client pinned to core 1 (where there are two cores), one request
at a time, in two phases of ``--seconds`` each:

- ``miss``: every request carries fresh random input, so the model runs every time;
- ``hit``: one input sent again and again, answered from the cache after the first.

Every answer is checked against ONNX Runtime run in this process. Reports p50/p99 latency per
phase, the hit/miss ratio of p50s (the target is <= 0.30), and the server's cache statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import CLIENT_CORE, forwardpass_server, serving
from models import IN_FEATURES, _write, build_compute

CACHE_BYTES = 64 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _phase(client: Any, session: Any, inputs: list[np.ndarray], seconds: float) -> dict[str, Any]:
    import tritonclient.http as httpclient

    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        x = inputs[i % len(inputs)]
        i += 1
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        start = time.perf_counter()
        result = client.infer("compute", [tensor])
        latencies.append(time.perf_counter() - start)
        expected = session.run(None, {"input": x})[0]
        if not np.allclose(result.as_numpy("output"), expected, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"wrong answer for request {i}")
    latencies.sort()
    return {
        "requests": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import tritonclient.http as httpclient

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(CLIENT_CORE)})
    model = build_compute()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        _write(root, "compute", model.SerializeToString(), 32)
        config = root / "compute" / "config.pbtxt"
        config.write_text(config.read_text() + "response_cache { enable: true }\n")
        port = _free_port()
        cmd = forwardpass_server(root, port) + ["--cache-config", f"local,size={CACHE_BYTES}"]
        with serving(cmd, f"http://127.0.0.1:{port}/v2/models/compute/ready"):
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            fresh = [
                rng.standard_normal((1, IN_FEATURES)).astype(np.float32) for _ in range(100_000)
            ]
            _phase(client, session, fresh[-20:], 0.5)  # warm-up (misses)
            miss = _phase(client, session, fresh[:-20], args.seconds)
            hit = _phase(client, session, [fresh[-1]], args.seconds)
            stats = client.get_inference_statistics("compute")["model_stats"][0]
            client.close()
    inference = stats["inference_stats"]
    report = {
        "miss": miss,
        "hit": hit,
        "hit_over_miss_p50": hit["p50_ms"] / miss["p50_ms"],
        "server_cache_hit": inference["cache_hit"],
        "server_cache_miss": inference["cache_miss"],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"miss: p50 {miss['p50_ms']:.2f} ms  p99 {miss['p99_ms']:.2f} ms  ({miss['requests']})"
        )
        print(f"hit:  p50 {hit['p50_ms']:.2f} ms  p99 {hit['p99_ms']:.2f} ms  ({hit['requests']})")
        print(f"hit/miss p50: {report['hit_over_miss_p50']:.2f} (target <= 0.30)")
        print(f"server: cache_hit {inference['cache_hit']}  cache_miss {inference['cache_miss']}")
    return 0 if report["hit_over_miss_p50"] <= 0.30 else 1


if __name__ == "__main__":
    sys.exit(main())
