"""An edge bundle against ``forwardpass serve``: cold start, peak memory, same answers.

Usage::

    python bench/edge_bench.py [--model digits] [--model-repository DIR] [--runs 3] [--json]

It exports MODEL (``forwardpass export --edge``) into a temporary folder, then, ``--runs``
times each: starts the bundle's runner in a fresh interpreter (``python -I``, clean
environment, forwardpass unimportable) on the model's samples, and starts ``forwardpass
serve`` on the same repository and sends the first sample over HTTP. Cold start is process
start to the first answer; peak memory is the process's maximum resident set, measured from a
small interpreter that started it. The answers must agree (against the served model).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import forwardpass
from forwardpass.export import TARGETS, ExportOptions, export_bundle
from forwardpass.export.manifest import measure_process, run_runner
from forwardpass.export.samples import image_inputs, request_arrays
from forwardpass.repository import ModelRepository


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _v2_body(arrays: dict[str, np.ndarray]) -> bytes:
    inputs = []
    for name, a in arrays.items():
        if a.dtype == object:
            raise SystemExit(
                "this benchmark sends tensors as JSON; pick a model with tensor inputs"
            )
        inputs.append(
            {"name": name, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
        )
    return json.dumps({"inputs": inputs}).encode()


def serve_once(repository: Path, model: str, body: bytes, scratch: Path) -> dict[str, Any]:
    """``forwardpass serve`` from a fresh interpreter until it answers ``body``."""
    port = _free_port()
    # The measurer starts processes in a clean environment: point this one at the
    # forwardpass being benchmarked.
    source = Path(forwardpass.__file__).resolve().parents[1]
    command = [
        "env", f"PYTHONPATH={source}", sys.executable, "-m", "forwardpass", "serve",
        "--model-repository", str(repository),
        "--http-port", str(port), "--no-grpc", "--log-level", "WARNING",
    ]  # fmt: skip
    (scratch / "body.json").write_bytes(body)
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    report = measure_process(command, scratch, url, scratch / "body.json")
    if not report["out"]:
        raise SystemExit(f"forwardpass serve did not answer: {report['stderr'][-500:]}")
    return {
        "cold_start_s": report["cold"],
        "peak_rss_mib": report["peak_rss_mib"],
        "answer": json.loads(report["out"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument(
        "--model-repository", type=Path, default=Path(forwardpass.__file__).parent / "models"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "bundle"
        result = export_bundle(
            ExportOptions(
                args.model, args.model_repository, target=TARGETS["x86_64"], output=folder,
                repeat=5,
            )
        )  # fmt: skip
        config = ModelRepository(args.model_repository).read(args.model).config
        samples_dir = args.model_repository / args.model / "samples"
        images = image_inputs(config, None)
        paths = sorted(samples_dir.glob("*.png"))[:4] if samples_dir.is_dir() else []
        if not paths:
            raise SystemExit(f"{args.model} has no samples/ pictures to send")
        specs = {s.name: s for s in config.inputs}
        bodies = [_v2_body(request_arrays(p, config, specs, images)) for p in paths]
        edge, served = [], []
        for _ in range(args.runs):
            edge.append(run_runner(folder / "runner.py", paths, repeat=0))
            served.append(serve_once(args.model_repository, args.model, bodies[0], Path(scratch)))
        mismatches = 0
        for bundle_answer, server_answer in [(edge[0].answers[0], served[0]["answer"])]:
            out = server_answer["outputs"][0]
            got = np.asarray(bundle_answer["outputs"][out["name"]], dtype=np.float64).ravel()
            if not np.allclose(got, np.asarray(out["data"]), rtol=1e-4, atol=1e-5):
                mismatches += 1
        report = {
            "model": args.model,
            "runs": args.runs,
            "bundle_bytes": sum(result.manifest.files.values()),
            "bundle": {
                "cold_start_s": statistics.median(r.measurement.cold_start_s for r in edge),
                "peak_rss_mib": statistics.median(r.measurement.peak_rss_mib for r in edge),
            },
            "serve": {
                "cold_start_s": statistics.median(s["cold_start_s"] for s in served),
                "peak_rss_mib": statistics.median(s["peak_rss_mib"] for s in served),
            },
            "same_answers": mismatches == 0,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for what in ("bundle", "serve"):
        r = report[what]
        print(f"{what:7s} cold start {r['cold_start_s'] * 1000:7.0f} ms   "
              f"peak RSS {r['peak_rss_mib']:6.0f} MiB")  # fmt: skip
    print(f"bundle {report['bundle_bytes'] / 1024:.0f} KiB; same answers: {report['same_answers']}")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
