"""The zoo's recommender under load: top-10 over all 1,682 films per request.

``movielens-recommender`` is built (or taken from ``--model-repository``) with ONNX Runtime on
one intra-op thread, served by ``forwardpass serve`` pinned to core 0, and driven by a
closed-loop client (``--concurrency`` workers, 32 by default, one keep-alive connection each)
that sends one user id per request, cycling through all 943 users; every answer is checked
to hold 10 titles and 10 scores. Reported: requests/s, p50/p99, and from the server's
statistics API the share of server time spent scoring (``compute_infer``: the batched ONNX
forward pass) against processing (``compute_input`` + ``compute_output``: id lookup,
exclusion, top-k and titles) and queueing.

    python bench/recommender_bench.py [--concurrency 32] [--duration 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # a script beside its helpers, not a package
    build_zoo_model,
    closed_loop,
    forwardpass_server,
    http_request,
    one_thread_repository,
    serving,
)

MODEL = "movielens-recommender"


def requests(port: int, user_ids: list[str]) -> list[tuple[str, bytes]]:
    path = f"/v2/models/{MODEL}/infer"
    out = []
    for user in user_ids:
        body = json.dumps(
            {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1, 1], "data": [user]}]}
        ).encode()
        raw = http_request("127.0.0.1", port, path, body, {"Content-Type": "application/json"})
        out.append((user, raw))
    return out


def check(key: str, status: bytes, body: bytes) -> str | None:
    if b" 200 " not in status:
        return f"user {key}: {status!r} {body[:200]!r}"
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    if len(outputs["titles"]["data"]) != 10 or len(outputs["scores"]["data"]) != 10:
        return f"user {key}: not 10 titles and scores"
    return None


def shares(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/stats"
    with urllib.request.urlopen(url, timeout=10) as answer:
        stats = json.loads(answer.read())["model_stats"][0]["inference_stats"]
    ns = {k: int(stats[k]["ns"]) for k in ("queue", "compute_input", "compute_infer",
                                          "compute_output")}  # fmt: skip
    total = sum(ns.values()) or 1
    return {
        "scoring_share": ns["compute_infer"] / total,
        "processing_share": (ns["compute_input"] + ns["compute_output"]) / total,
        "queue_share": ns["queue"] / total,
        "server_ns": ns,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = (
            one_thread_repository(args.model_repository, MODEL)
            if args.model_repository
            else build_zoo_model(Path(tmp) / "models", MODEL)
        )
        user_ids = (repository / MODEL / "users.txt").read_text().splitlines()[:-1]
        cmd = forwardpass_server(repository, args.port)
        with serving(cmd, f"http://127.0.0.1:{args.port}/v2/models/{MODEL}/ready"):
            result = asyncio.run(
                closed_loop(
                    "127.0.0.1",
                    args.port,
                    requests(args.port, user_ids),
                    check,
                    args.concurrency,
                    args.warmup,
                    args.duration,
                )
            )
            result.update(shares(args.port))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
