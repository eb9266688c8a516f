"""An edge bundle against ``forwardpass serve``: cold start, peak memory, same answers.

Usage::

    python bench/edge_bench.py [--model digits] [--model-repository DIR] [--version V]
                               [--runs 3] [--json]

It exports MODEL (``forwardpass export --edge``, version V or the latest) into a temporary
folder, then, ``--runs`` times each: starts the bundle's runner in a fresh interpreter
(``python -I``, clean environment, forwardpass unimportable) on the export's own sample inputs
(the model's ``samples/`` pictures, warm-up samples, or generated pictures and texts), and
starts ``forwardpass serve`` on a repository holding only that model and version and sends the
first sample over HTTP (JSON; pictures as BYTES in the binary tensor extension). Cold start is
process start to the first answer; peak memory is the process's maximum resident set, measured
from a small interpreter that started it. The answers must agree (the export's comparison:
floats within 1e-4 relative, strings and integers exactly).

Beside both it measures the floor of any Python runner on this stack: a fresh ``python -I``
that only imports numpy and onnxruntime (and Pillow for pictures), loads no model and answers
nothing. A bundle cannot start faster or smaller than that with the stock onnxruntime wheel;
the floor's ratio to the server says how much of a target is reachable at all.

Issue #15's targets for EfficientNet-Lite0 INT8 (``forwardpass optimize efficientnet-lite0
--target edge --methods int8-static``, then ``--version`` of what it wrote): bundle cold start
≤ ⅓ and peak memory ≤ ½ of the server's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import forwardpass
from forwardpass.export import TARGETS, ExportOptions, export_bundle
from forwardpass.export.bundle import client_inputs
from forwardpass.export.manifest import measure_process, run_runner
from forwardpass.export.samples import image_inputs, request_arrays, write_samples
from forwardpass.export.verification import differences
from forwardpass.model_config import ModelConfig
from forwardpass.processing.spec import read_declaration
from forwardpass.repository import ModelRepository


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def v2_request(arrays: dict[str, np.ndarray], config: ModelConfig) -> tuple[bytes, dict[str, str]]:
    """One inference request for ``arrays``: JSON, with BYTES that are not UTF-8 text (pictures)
    in the binary tensor extension."""
    specs = {s.name: s for s in config.inputs}
    inputs, blobs = [], []
    for name, a in arrays.items():
        entry: dict[str, Any] = {"name": name, "shape": list(a.shape)}
        if a.dtype == object:
            items = [x if isinstance(x, bytes) else str(x).encode() for x in a.reshape(-1)]
            entry["datatype"] = "BYTES"
            try:
                entry["data"] = [x.decode("utf-8") for x in items]
            except UnicodeDecodeError:
                blob = b"".join(len(x).to_bytes(4, "little") + x for x in items)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
        else:
            spec = specs.get(name)
            entry["datatype"] = spec.datatype.value if spec else "FP32"
            entry["data"] = a.ravel().tolist()
        inputs.append(entry)
    header = json.dumps({"inputs": inputs}).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + b"".join(blobs), headers


def served_arrays(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    """The JSON answer's outputs as arrays, as the export compares them."""
    out = {}
    for o in answer["outputs"]:
        dtype = (
            object
            if o["datatype"] == "BYTES"
            else np.dtype(o["datatype"].lower().replace("fp", "float"))
        )
        out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out


def single_model_repository(repository: Path, model: str, version: int, into: Path) -> Path:
    """A copy of ``repository`` holding only ``model`` with only ``version``, so the server
    loads what the bundle holds and nothing else (a copy: the server refuses links that lead
    outside the model's folder)."""
    source = repository / model
    folder = into / model
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_dir() and item.name.isdigit() and item.name != str(version):
            continue
        if item.is_dir():
            shutil.copytree(item, folder / item.name)
        else:
            shutil.copyfile(item, folder / item.name)
    return into


def serve_once(
    repository: Path, model: str, request: tuple[bytes, dict[str, str]], scratch: Path
) -> dict[str, Any]:
    """``forwardpass serve`` from a fresh interpreter until it answers ``request``."""
    port = _free_port()
    # The measurer starts processes in a clean environment: point this one at the
    # forwardpass being benchmarked.
    source = Path(forwardpass.__file__).resolve().parents[1]
    command = [
        "env", f"PYTHONPATH={source}", sys.executable, "-m", "forwardpass", "serve",
        "--model-repository", str(repository),
        "--http-port", str(port), "--no-grpc", "--log-level", "WARNING",
    ]  # fmt: skip
    body, headers = request
    (scratch / "body.bin").write_bytes(body)
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    report = measure_process(command, scratch, url, scratch / "body.bin", headers)
    if not report["out"]:
        raise SystemExit(f"forwardpass serve did not answer: {report['stderr'][-500:]}")
    return {
        "cold_start_s": report["cold"],
        "peak_rss_mib": report["peak_rss_mib"],
        "answer": json.loads(report["out"]),
    }


def floor_once(images: bool, scratch: Path) -> dict[str, Any]:
    """The least any runner on this stack costs: a fresh ``python -I`` that only imports
    numpy and onnxruntime (and Pillow for pictures), then prints a line."""
    modules = "numpy, onnxruntime" + (", PIL.Image" if images else "")
    command = [sys.executable, "-I", "-c", f"import {modules}; print('ready', flush=True)"]
    report = measure_process(command, scratch)
    if report["code"] != 0:
        raise SystemExit(f"importing {modules} failed: {report['stderr'][-500:]}")
    return {"cold_start_s": report["cold"], "peak_rss_mib": report["peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument(
        "--model-repository", type=Path, default=Path(forwardpass.__file__).parent / "models"
    )
    parser.add_argument("--version", type=int, default=None, help="default: the latest")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    entry = ModelRepository(args.model_repository).read(args.model)
    version = args.version if args.version is not None else entry.versions[-1]
    config = entry.config
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        folder = scratch / "bundle"
        result = export_bundle(
            ExportOptions(
                args.model, args.model_repository, version=version, target=TARGETS["x86_64"],
                output=folder, repeat=5,
            )
        )  # fmt: skip
        declaration = read_declaration(config)
        samples = write_samples(
            config, entry.path, client_inputs(config, declaration), declaration, scratch / "in"
        )
        paths = [s.path for s in samples]
        specs = {s.name: s for s in config.inputs}
        specs.update({s.name: s for s in client_inputs(config, declaration)})
        images = image_inputs(config, declaration)
        request = v2_request(request_arrays(paths[0], config, specs, images), config)
        served_repo = single_model_repository(
            args.model_repository, args.model, version, scratch / "repo"
        )
        edge, served, floor = [], [], []
        for _ in range(args.runs):
            edge.append(run_runner(folder / "runner.py", paths, repeat=0))
            served.append(serve_once(served_repo, args.model, request, scratch))
            floor.append(floor_once(bool(images), scratch))
        problems = differences(served_arrays(served[0]["answer"]), edge[0].answers[0]["outputs"])
        report = {
            "model": args.model,
            "version": version,
            "runs": args.runs,
            "samples": [f"{s.path.name} ({s.source})" for s in samples],
            "bundle_bytes": sum(result.manifest.files.values()),
            "bundle": {
                "cold_start_s": statistics.median(r.measurement.cold_start_s for r in edge),
                "peak_rss_mib": statistics.median(r.measurement.peak_rss_mib for r in edge),
                "latency_p50_ms": result.manifest.measured_on_build_machine.latency_p50_ms,
            },
            "serve": {
                "cold_start_s": statistics.median(s["cold_start_s"] for s in served),
                "peak_rss_mib": statistics.median(s["peak_rss_mib"] for s in served),
            },
            "floor": {
                "imports": "numpy, onnxruntime" + (", Pillow" if images else ""),
                "cold_start_s": statistics.median(f["cold_start_s"] for f in floor),
                "peak_rss_mib": statistics.median(f["peak_rss_mib"] for f in floor),
            },
            "same_answers": not problems,
            "differences": problems,
        }
    b, v = report["bundle"], report["serve"]
    report["cold_start_ratio"] = b["cold_start_s"] / v["cold_start_s"]
    report["memory_ratio"] = b["peak_rss_mib"] / v["peak_rss_mib"]
    f = report["floor"]
    report["floor_cold_start_ratio"] = f["cold_start_s"] / v["cold_start_s"]
    report["floor_memory_ratio"] = f["peak_rss_mib"] / v["peak_rss_mib"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.model} version {version}, {args.runs} runs each, medians:")
        for what in ("bundle", "serve", "floor"):
            r = report[what]
            print(f"  {what:7s} cold start {r['cold_start_s'] * 1000:7.0f} ms   "
                  f"peak RSS {r['peak_rss_mib']:6.0f} MiB")  # fmt: skip
        print(
            f"  bundle/serve: cold start {report['cold_start_ratio']:.2f} (target <= 0.33), "
            f"memory {report['memory_ratio']:.2f} (target <= 0.5)"
        )
        print(
            f"  floor/serve (python -I importing only {f['imports']}): cold start "
            f"{report['floor_cold_start_ratio']:.2f}, memory {report['floor_memory_ratio']:.2f}"
        )
        print(f"  bundle {report['bundle_bytes'] / 1024:.0f} KiB; same answers: {not problems}")
        for problem in problems:
            print(f"  differs: {problem}")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
