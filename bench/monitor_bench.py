"""The cost of monitoring (issue #12): the tiny model's throughput at concurrency 32 with the
request log and drift monitoring on (metadata for every request, 1 % payload sampling, every
request profiled into the drift window) vs monitoring off, in the same run; and (unless
``--no-log-only``) the request log alone on the plain repository.

The "on" server serves a copy of the repository whose tiny model declares
``monitoring: {drift: {...}, payload_sample: 0.01}``, with a reference profile built through
the reference module (``forwardpass.monitor.reference``) from random inputs, as
``forwardpass monitor reference`` would.

Both servers are pinned to the server core and the load to the client core (bench/common.py);
the two configurations alternate for ``--rounds`` rounds so that drift of the machine hits
both alike, and the ratio of their median throughputs is the figure. Target: >= 0.95.

    python bench/monitor_bench.py [--duration 5] [--rounds 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, bench_load, forwardpass_server, serving  # a script beside its helpers

HERE = Path(__file__).resolve().parent


def throughput(repo: Path, port: int, extra: list[str], duration: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    with serving([*forwardpass_server(repo, port), *extra], url + "/v2/health/ready"):
        level = bench_load(url, "tiny", "32", duration)[0]
    return level


def main() -> int:
    parser = argparse.ArgumentParser(description="forwardpass monitoring overhead")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", type=float, default=0.01, help="payload sample fraction")
    parser.add_argument("--window", type=int, default=1000, help="drift window (rows)")
    parser.add_argument("--step", type=int, default=1000, help="rows between evaluations")
    parser.add_argument(
        "--log-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the request log alone (no drift)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "log": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(
            [PY, str(HERE / "models.py"), str(repo), "--no-timing"], check=True, capture_output=True
        )
        monitored = monitored_repository(repo, Path(tmp), args.sample, args.window, args.step)
        for r in range(args.rounds):
            log = Path(tmp) / f"requests-{r}.db"
            on = ["--request-log", str(log), "--monitor-payload-sample", str(args.sample)]
            runs["off"].append(throughput(repo, 8211, [], args.duration))
            if args.log_only:
                log_only = ["--request-log", str(Path(tmp) / f"log-only-{r}.db")]
                runs["log"].append(throughput(repo, 8213, [*log_only, *on[2:]], args.duration))
            runs["on"].append(throughput(monitored, 8212, on, args.duration))
            runs["on"][-1]["logged_rows"] = _rows(log)
            runs["on"][-1]["drift_rows_seen"] = _drift_rows(monitored)
    off = statistics.median(x["throughput_infer_per_s"] for x in runs["off"])
    on = statistics.median(x["throughput_infer_per_s"] for x in runs["on"])
    results = {"runs": runs, "off_rps": off, "on_rps": on, "ratio": on / off if off else 0.0}
    if runs["log"]:
        logged = statistics.median(x["throughput_infer_per_s"] for x in runs["log"])
        results["log_rps"] = logged
        results["log_ratio"] = logged / off if off else 0.0
    print(f"tiny, concurrency 32, {args.rounds} round(s) of {args.duration:g}s each")
    print(f"  drift window {args.window} rows, evaluated every {args.step} rows")
    print(f"  monitoring off: {off:10.0f} req/s")
    if runs["log"]:
        print(
            f"  request log on: {results['log_rps']:10.0f} req/s  "
            f"({results['log_ratio']:.3f} of off; target >= 0.95)"
        )
    print(f"  log + drift on: {on:10.0f} req/s  ({results['ratio']:.3f} of off; target >= 0.95)")
    print(f"  rows logged per round: {[x['logged_rows'] for x in runs['on']]}")
    print(f"  drift rows seen after each round: {[x['drift_rows_seen'] for x in runs['on']]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def monitored_repository(repo: Path, tmp: Path, sample: float, window: int, step: int) -> Path:
    """A copy of ``repo`` with only ``tiny``, declaring drift monitoring and 1 % payload
    sampling, and its reference profile built from random inputs."""
    from forwardpass.monitor.reference import build_reference

    monitored = tmp / "repo-monitored"
    shutil.copytree(repo / "tiny", monitored / "tiny")
    # An evaluation tests all 66 features (64 inputs, the class and the top score; a few ms
    # for all of them, the numeric ones batched), so its cost follows rate / step.
    section = json.dumps({"drift": {"window": window, "step": step}, "payload_sample": sample})
    config = monitored / "tiny" / "config.pbtxt"
    config.write_text(
        config.read_text()
        + f'\nparameters {{ key: "monitoring" value: {{ string_value: {json.dumps(section)} }} }}\n'
    )
    data = tmp / "tiny-reference.npz"
    np.savez(data, input=np.random.default_rng(0).normal(size=(1000, 64)).astype(np.float32))
    meta = build_reference(monitored, "tiny", data)
    print(f"reference for tiny: {meta['rows']} rows, {len(meta['features'])} features")
    return monitored


def _drift_rows(repo: Path) -> int:
    state = repo / "tiny" / "monitor" / "state" / "drift-v1.json"
    if not state.is_file():
        return 0
    return int(json.loads(state.read_text()).get("seen", 0))


def _rows(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    return int(sqlite3.connect(path).execute("SELECT count(*) FROM requests").fetchone()[0])


if __name__ == "__main__":
    sys.exit(main())
