"""Adaptive batching (issue #13, item 3): one batching config, no hand tuning, two loads.

Every model below that says "adaptive" carries the same batching config (``ADAPTIVE``), on
the models of bench/models.py, one server pinned to core 0, the load on core 1:

(a) the tiny MLP at concurrency 1: p50 within 0.1 ms of the same model on a no-batching config
    (Triton's rules with a 2 ms delay, shown beside, answer in about 2.5 ms; with no delay,
    also beside, they show what the batcher itself costs a lone request);
(b) the ~5 ms compute-bound model at concurrency 32: at least 97 % of the bare ONNX Runtime
    session's best-batch throughput (Triton's rules with no delay, shown beside).

    python bench/adaptive_bench.py [--duration 5] [--json out.json] [--check]

``--check`` exits 1 when a target is missed. The server's learned estimates (the
``forwardpass_adaptive_*`` gauges, the batch cap among them) are printed after the loads,
with the bare session's rows/s by batch size and the batch sizes each compute model ran.

Where (b)'s missing share goes: the same core parses HTTP and computes, so the server's
per-request cost is compute lost. The tiny model without batching at concurrency 32 bounds
that cost (``1 / throughput`` per request, its few microseconds of compute included);
``overhead × compute rate`` is the server's share, what remains below 100 % the batcher's
(batch sizes off the best, idle instance, merge/split).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # a script beside its helpers, not a package
    PY,
    bench_load,
    forwardpass_server,
    raw_session,
    serving,
)

HERE = Path(__file__).resolve().parent
PORT = 8211

#: The batching config of every adaptive model: no delay cap, no objective, nothing tuned.
ADAPTIVE = (
    "dynamic_batching { }\n"
    'parameters {\n  key: "batching"\n  value: { string_value: "adaptive" }\n}\n'
)
#: Triton's rules with a delay: the lone-request latency adaptive batching removes.
TRITON_DELAY = "dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}\n"


def variant(repo: Path, source: str, name: str, batching: str) -> None:
    """``repo/name``: a copy of model ``source`` whose ``dynamic_batching { }`` is ``batching``."""
    shutil.copytree(repo / source, repo / name)
    config = (repo / source / "config.pbtxt").read_text()
    assert "dynamic_batching { }\n" in config, "bench/models.py config changed shape"
    config = config.replace(f'name: "{source}"', f'name: "{name}"')
    (repo / name / "config.pbtxt").write_text(config.replace("dynamic_batching { }\n", batching))


def batch_sizes(url: str, model: str) -> dict[int, int]:
    """How many batches of each size ``model`` ran (the statistics API's batch_stats)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as answer:
        [entry] = json.load(answer)["model_stats"]
    return {
        int(b["batch_size"]): int(b["compute_infer"]["count"])
        for b in sorted(entry["batch_stats"], key=lambda b: int(b["batch_size"]))
    }


def learned(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [line for line in text.splitlines() if line.startswith("forwardpass_adaptive_")]


def main() -> int:
    parser = argparse.ArgumentParser(description="forwardpass adaptive batching benchmark")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--raw-seconds", type=float, default=4.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    d = args.duration
    r: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(
            [PY, str(HERE / "models.py"), str(repo), "--no-timing"], check=True, capture_output=True
        )
        variant(repo, "tiny", "tiny_adaptive", ADAPTIVE)
        variant(repo, "tiny", "tiny_delay", TRITON_DELAY)
        variant(repo, "compute", "compute_adaptive", ADAPTIVE)
        r["raw_compute"] = raw_session(
            repo / "compute/1/model.onnx", "1,4,8,16,24,32", args.raw_seconds
        )

        url = f"http://127.0.0.1:{PORT}"
        with serving(forwardpass_server(repo, PORT), url + "/v2/health/ready"):
            r["tiny_nobatch"] = bench_load(url, "tiny_nobatch", "1", d)
            r["tiny_adaptive"] = bench_load(url, "tiny_adaptive", "1", d)
            r["tiny_delay0"] = bench_load(url, "tiny", "1", d)
            r["tiny_delay"] = bench_load(url, "tiny_delay", "1", d)
            r["tiny_nobatch_c32"] = bench_load(url, "tiny_nobatch", "32", d)
            r["compute_adaptive"] = bench_load(url, "compute_adaptive", "32", d)
            r["compute_delay0"] = bench_load(url, "compute", "32", d)
            r["learned"] = learned(url)
            r["batches"] = {m: batch_sizes(url, m) for m in ("compute_adaptive", "compute")}

    ok = report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0 if ok or not args.check else 1


def report(r: dict[str, Any]) -> bool:
    def p50(key: str) -> float:
        return float(r[key][0]["latency_ms"]["p50"])

    def tput(key: str) -> float:
        return float(r[key][0]["throughput_infer_per_s"])

    best = max(r["raw_compute"], key=lambda x: x["samples_per_s"])
    best_raw = float(best["samples_per_s"])
    lone, nobatch = p50("tiny_adaptive"), p50("tiny_nobatch")
    share = tput("compute_adaptive") / best_raw
    overhead_s = 1 / tput("tiny_nobatch_c32")
    server_share = overhead_s * tput("compute_adaptive")
    rows = [
        ("tiny c1 p50, adaptive (ms)", f"{lone:.3f}", f"no batching {nobatch:.3f} ms"),
        ("tiny c1 p50, Triton delay 0 (ms)", f"{p50('tiny_delay0'):.3f}", "the batcher's own cost"),
        ("tiny c1 p50, Triton 2 ms delay (ms)", f"{p50('tiny_delay'):.3f}", ""),
        (
            "compute c32, adaptive (infer/s)",
            f"{tput('compute_adaptive'):,.1f}",
            f"{share:.1%} of bare best batch ({best['batch']}: {best_raw:,.1f}/s)",
        ),
        (
            "compute c32, Triton delay 0 (infer/s)",
            f"{tput('compute_delay0'):,.1f}",
            f"{tput('compute_delay0') / best_raw:.1%} of bare best batch",
        ),
        (
            "server cost per request (us)",
            f"{overhead_s * 1e6:,.1f}",
            f"1 / tiny no-batching c32 ({tput('tiny_nobatch_c32'):,.0f}/s)",
        ),
        (
            "  its share of adaptive's compute core",
            f"{server_share:.1%}",
            f"the batcher's: {1 - share - server_share:.1%} (what is left below 100 %)",
        ),
    ]
    width = max(len(a) for a, _, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")
    targets = {
        "(a) c1 p50 within 0.1 ms of no batching": lone - nobatch <= 0.1,
        "(b) compute c32 >= 97% of bare best batch": share >= 0.97,
    }
    for name, met in targets.items():
        print(f"{'met' if met else 'MISSED':>6}  {name}")
    curve = ", ".join(f"{x['batch']}: {float(x['samples_per_s']):,.1f}" for x in r["raw_compute"])
    print(f"  bare compute rows/s by batch: {curve}")
    for model, sizes in r["batches"].items():
        print(f"  {model} batches by size: " + ", ".join(f"{k}x{n}" for k, n in sizes.items()))
    for line in r["learned"]:
        print("  " + line)
    return all(targets.values())


if __name__ == "__main__":
    sys.exit(main())
