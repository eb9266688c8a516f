"""``serve --workers 2`` against ``--workers 1`` on the compute-bound model (issue #13).

The compute-bound model of bench/models.py (a stack of 1024x1024 layers, ~5 ms per sample at
batch 1, dynamic batching, one ORT intra-op thread per process) at concurrency 32, one sample
per request, JSON. One server with one worker, then one with two, in the same run; neither is
pinned (two workers need both cores) and the load generator (``forwardpass bench``, one asyncio
process) shares the cores with them: it costs a small fraction of a 5 ms forward pass. Target:
two workers ≥ 1.8× one. Also the time from ``forwardpass serve --workers 2`` (embedded
repository) to its listening line (target < 2 s).

The machine's own ceiling is measured beside: the bare ONNX Runtime session (bench/raw_ort.py,
best of batch 1/8/16/32, one thread) as one process, then as two processes at once, one per
core. Two cores of a virtual machine need not give twice one (shared caches, memory bandwidth,
vCPUs that are hyperthreads of one host core); the served ratio is read against that ceiling.

    python bench/workers_bench.py [--duration 10] [--model compute] [--json results.json]
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
from common import (
    CLIENT_CORE,
    PY,
    SERVER_CORE,
    pinned,
    serving,
)  # a script beside its helpers, not a package

HERE = Path(__file__).resolve().parent
PORT = 8731


def load(url: str, model: str, concurrency: int, duration: float) -> dict[str, Any]:
    cmd = [
        PY, "-m", "forwardpass", "bench", model, "--url", url, "-c", str(concurrency),
        "-d", str(duration), "--warmup", "1", "--json",
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    (result,) = json.loads(out)["results"]
    return dict(result)


def bare_ceiling(model: Path, seconds: float) -> dict[str, float]:
    """Best-batch samples/s of the bare session: one process, then two at once (one per core)."""
    script = str(HERE / "raw_ort.py")

    def start(core: str) -> subprocess.Popen[str]:
        cmd = pinned(core, PY, script, str(model), "--batch", "1,8,16,32", "--seconds",
                     str(seconds), "--json")  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def best(proc: subprocess.Popen[str]) -> float:
        out, _ = proc.communicate()
        return max(json.loads(line)["samples_per_s"] for line in out.splitlines() if line.strip())

    one = best(start(SERVER_CORE))
    pair = [start(SERVER_CORE), start(CLIENT_CORE)]
    two = sum(best(proc) for proc in pair)
    return {"one_process": one, "two_processes": two, "ratio": two / one}


def startup_time(workers: int) -> float:
    began = time.perf_counter()
    proc = subprocess.Popen(
        [PY, "-m", "forwardpass", "serve", "--http-port", "0", "--grpc-port", "0",
         "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.search(r"listening on http://", line):
            break
    elapsed = time.perf_counter() - began
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description="forwardpass --workers benchmark")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model", default="compute", help="a model of bench/models.py")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results: dict[str, Any] = {"model": args.model, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(
            [PY, str(HERE / "models.py"), str(repo), "--no-timing"], check=True, capture_output=True
        )
        results["bare"] = bare_ceiling(repo / args.model / "1" / "model.onnx", args.duration / 2)
        for workers in (1, 2):
            cmd = [
                PY, "-m", "forwardpass", "serve", "--model-repository", str(repo),
                "--http-port", str(PORT), "--no-grpc", "--log-level", "WARNING",
                "--workers", str(workers),
            ]  # fmt: skip
            url = f"127.0.0.1:{PORT}"
            with serving(cmd, f"http://{url}/v2/health/ready"):
                results[f"workers_{workers}"] = load(
                    url, args.model, args.concurrency, args.duration
                )
        results["startup_s_workers_2"] = startup_time(2)
    one = results["workers_1"]["throughput_infer_per_s"]
    two = results["workers_2"]["throughput_infer_per_s"]
    results["ratio"] = two / one if one else None
    print(f"{args.model}, concurrency {args.concurrency}, one sample per request:")
    for workers in (1, 2):
        r = results[f"workers_{workers}"]
        print(
            f"  --workers {workers}: {r['throughput_infer_per_s']:9,.1f} infer/s"
            f"   p50 {r['latency_ms']['p50']} ms   p99 {r['latency_ms']['p99']} ms"
            f"   errors {r['errors']}"
        )
    print(f"  ratio 2/1: {results['ratio']:.2f}x (target >= 1.8x)")
    bare = results["bare"]
    print(
        f"  bare session, best batch: one process {bare['one_process']:,.1f}/s, two at once"
        f" {bare['two_processes']:,.1f}/s: the machine's ceiling {bare['ratio']:.2f}x"
    )
    print(f"  start-up, --workers 2, embedded repository: {results['startup_s_workers_2']:.2f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
