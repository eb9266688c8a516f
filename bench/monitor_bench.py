"""The cost of monitoring (issue #12): the tiny model's throughput at concurrency 32 with the
request log on (metadata for every request, 1 % payload sampling) vs off, in the same run.

Both servers are pinned to the server core and the load to the client core (bench/common.py);
the two configurations alternate for ``--rounds`` rounds so that drift of the machine hits
both alike, and the ratio of their median throughputs is the figure. Target: >= 0.95.

    python bench/monitor_bench.py [--duration 5] [--rounds 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, forwardpass_server, serving  # a script beside its helpers
from common import bench_load as load

HERE = Path(__file__).resolve().parent


def throughput(repo: Path, port: int, extra: list[str], duration: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    with serving([*forwardpass_server(repo, port), *extra], url + "/v2/health/ready"):
        level = load(url, "tiny", "32", duration)[0]
    return level


def main() -> int:
    parser = argparse.ArgumentParser(description="forwardpass monitoring overhead")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", type=float, default=0.01, help="payload sample fraction")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(
            [PY, str(HERE / "models.py"), str(repo), "--no-timing"], check=True, capture_output=True
        )
        for r in range(args.rounds):
            log = Path(tmp) / f"requests-{r}.db"
            on = ["--request-log", str(log), "--monitor-payload-sample", str(args.sample)]
            runs["off"].append(throughput(repo, 8211, [], args.duration))
            runs["on"].append(throughput(repo, 8212, on, args.duration))
            rows = _rows(log)
            runs["on"][-1]["logged_rows"] = rows
    off = statistics.median(x["throughput_infer_per_s"] for x in runs["off"])
    on = statistics.median(x["throughput_infer_per_s"] for x in runs["on"])
    results = {"runs": runs, "off_rps": off, "on_rps": on, "ratio": on / off if off else 0.0}
    print(f"tiny, concurrency 32, {args.rounds} round(s) of {args.duration:g}s each")
    print(f"  monitoring off: {off:10.0f} req/s")
    print(f"  request log on: {on:10.0f} req/s  ({results['ratio']:.3f} of off; target >= 0.95)")
    print(f"  rows logged per round: {[x['logged_rows'] for x in runs['on']]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _rows(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    return int(sqlite3.connect(path).execute("SELECT count(*) FROM requests").fetchone()[0])


if __name__ == "__main__":
    sys.exit(main())
