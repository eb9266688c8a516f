"""The serving benchmark of issue #4, every figure from one run, side by side.

The server under test is pinned to core 0 and the load generator to core 1 (taskset), ONNX
Runtime on one intra-op thread, one sample per request. Ratios are taken within this run so the
machine's noise cancels as far as it can:

- tiny MLP, JSON and binary, concurrency 1 and 32: forwardpass vs a plain FastAPI+onnxruntime
  endpoint (bench/baseline_fastapi.py) on the same core;
- compute-bound model, concurrency 32: forwardpass with batching (delay 0, and a 10 ms delay
  with preferred batch 16) vs without, against the bare session's best-batch throughput;
- time from ``forwardpass serve`` (embedded repository) to its listening line.

    python bench/serve_bench.py [--duration 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # a script beside its helpers, not a package
    PY,
    SERVER_CORE,
    bench_load,
    forwardpass_server,
    pinned,
    raw_session,
    serving,
)

HERE = Path(__file__).resolve().parent


def startup_time() -> float:
    began = time.perf_counter()
    proc = subprocess.Popen(
        [PY, "-m", "forwardpass", "serve", "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.search(r"listening on http://", line):
            break
    elapsed = time.perf_counter() - began
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description="forwardpass serving benchmark")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    d = args.duration
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(
            [PY, str(HERE / "models.py"), str(repo), "--no-timing"], check=True, capture_output=True
        )

        results["raw_tiny"] = raw_session(repo / "tiny/1/model.onnx", "1", 3)
        results["raw_compute"] = raw_session(repo / "compute/1/model.onnx", "1,8,16,32", 4)

        url = "http://127.0.0.1:8201"
        with serving(forwardpass_server(repo, 8201), url + "/v2/health/ready"):
            results["fp_tiny_json"] = bench_load(url, "tiny", "1,32", d)
            results["fp_tiny_binary"] = bench_load(url, "tiny", "1,32", d, binary=True)
            results["fp_tiny_nobatch_json"] = bench_load(url, "tiny_nobatch", "1,32", d)
            results["fp_compute"] = bench_load(url, "compute", "1,32", d)
            results["fp_compute_delay"] = bench_load(url, "compute_delay", "32", d)
            results["fp_compute_nobatch"] = bench_load(url, "compute_nobatch", "32", d)

        base_url = "http://127.0.0.1:8301"
        baseline = pinned(
            SERVER_CORE, PY, str(HERE / "baseline_fastapi.py"), str(repo / "tiny"), "--port", "8301"
        )
        with serving(baseline, base_url + "/v2/models/tiny"):
            results["fastapi_tiny_json"] = bench_load(base_url, "tiny", "1,32", d)
    results["startup_s"] = min(startup_time() for _ in range(3))

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _level(levels: list[dict[str, Any]], c: int) -> dict[str, Any]:
    return next(level for level in levels if level["concurrency"] == c)


def report(r: dict[str, Any]) -> None:
    def tput(key: str, c: int) -> float:
        return float(_level(r[key], c)["throughput_infer_per_s"])

    def p50(key: str, c: int) -> float:
        return float(_level(r[key], c)["latency_ms"]["p50"])

    best_raw = max(x["samples_per_s"] for x in r["raw_compute"])
    best_batch = max(r["raw_compute"], key=lambda x: x["samples_per_s"])["batch"]
    fp32, base32 = tput("fp_tiny_json", 32), tput("fastapi_tiny_json", 32)
    fp1, base1 = p50("fp_tiny_json", 1), p50("fastapi_tiny_json", 1)
    batched = tput("fp_compute", 32)
    rows = [
        (
            "tiny JSON c32 (infer/s)",
            f"{fp32:,.0f}",
            f"FastAPI {base32:,.0f} ({fp32 / base32:.1f}x)",
        ),
        ("tiny binary c32 (infer/s)", f"{tput('fp_tiny_binary', 32):,.0f}", ""),
        ("tiny JSON no-batch model c32", f"{tput('fp_tiny_nobatch_json', 32):,.0f}", ""),
        ("tiny JSON c1 p50 (ms)", f"{fp1:.3f}", f"FastAPI {base1:.3f}  (+{fp1 - base1:.3f} ms)"),
        ("bare session tiny batch 1 (samples/s)", f"{r['raw_tiny'][0]['samples_per_s']:,.0f}", ""),
        (
            "compute c32, batching delay 0",
            f"{tput('fp_compute', 32):,.1f}",
            f"{batched / best_raw:.1%} of bare best batch ({best_batch}: {best_raw:,.1f}/s)",
        ),
        (
            "compute c32, delay 10 ms, preferred 16",
            f"{tput('fp_compute_delay', 32):,.1f}",
            f"{tput('fp_compute_delay', 32) / best_raw:.1%} of bare best batch",
        ),
        (
            "compute c32, no batching",
            f"{tput('fp_compute_nobatch', 32):,.1f}",
            f"{tput('fp_compute_nobatch', 32) / best_raw:.1%} of bare best batch",
        ),
        ("compute c1 p50 (ms)", f"{p50('fp_compute', 1):.2f}", ""),
        ("serve ready, embedded repo (s)", f"{r['startup_s']:.2f}", "best of 3"),
    ]
    width = max(len(a) for a, _, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")


if __name__ == "__main__":
    sys.exit(main())
