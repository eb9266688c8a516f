"""End-to-end image classification through a real server vs the forward pass alone.

The zoo's ``efficientnet-lite0`` is built (or taken from ``--model-repository``) with ONNX
Runtime on one intra-op thread, then, within one run so the machine's noise cancels as far as
it can:

1. **bare**: a plain ``InferenceSession.run`` loop on core 0 over tensors pre-processed once
   from real photographs (scikit-image's), batch 1 and the batch sizes in ``--batch``;
2. **preprocess**: the server's own image processing (decode, resize, crop, normalise) on
   core 0, per image, for the record;
3. **served**: ``forwardpass serve`` pinned to core 0, and a closed-loop client pinned to core
   1 (16 workers by default, one keep-alive connection each) sending the JPEG files as BYTES
   (binary tensor extension) and asking for the ``top5`` labels; every answer is checked.

The figure of merit is served throughput / bare throughput (best batch, and batch 1).

With ``--processing-workers N`` the server decodes in N worker processes pinned to the
client's core (``--processing-cpus 1``), so core 0 runs only the serving loop and the forward
pass, as the bare loop does (issue 13's target: served ≥ 75 % of bare best batch).

    python bench/zoo_bench.py [--concurrency 16] [--duration 15] [--processing-workers 1]
                              [--json out.json]

On a machine shared with other work, treat one run as one noisy sample.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # a script beside its helpers, not a package
    CLIENT_CORE,
    SERVER_CORE,
    build_zoo_model,
    closed_loop,
    forwardpass_server,
    http_request,
    model_processing,
    one_thread_repository,
    run_role,
    serving,
)

HERE = Path(__file__).resolve()

MODEL = "efficientnet-lite0"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
#: Top-1 labels each photo must get (the model's answer on the unmodified photo).
EXPECTED = {
    "chelsea": {"tiger cat", "Egyptian cat", "tabby"},
    "coffee": {"espresso"},
}


def photos() -> dict[str, bytes]:
    """Real photographs from scikit-image, as JPEG files (quality 90)."""
    import skimage.data
    from PIL import Image

    out = {}
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(
            buffer, format="JPEG", quality=90
        )
        out[name] = buffer.getvalue()
    return out


def build(repository: Path, decoder: str = "pil") -> Path:
    """The zoo entry on one intra-op thread, decoding with ``decoder``."""
    return build_zoo_model(repository, MODEL, {"decoder": decoder})


def _processor(repository: Path) -> Any:
    return model_processing(repository, MODEL)


# --------------------------------------------------------------------------- roles (core 0/1)


def role_bare(repository: Path, batches: list[int], seconds: float) -> dict[str, Any]:
    """samples/s of session.run on pre-processed real photos, per batch size."""
    import onnxruntime as ort

    processing = _processor(repository)
    (image_input,) = processing.inputs
    tensors = [
        image_input({"image": np.array([[blob]], dtype=object)})["input"]
        for blob in photos().values()
    ]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(repository / MODEL / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    results = {}
    for batch in batches:
        feed = np.concatenate([tensors[i % len(tensors)] for i in range(batch)])
        for _ in range(3):
            session.run(None, {"input": feed})
        calls: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            session.run(None, {"input": feed})
            calls.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        results[str(batch)] = {
            "samples_per_s": len(calls) * batch / elapsed,
            "ms_per_call_p50": statistics.median(calls) * 1e3,
        }
    return results


def role_preprocess(repository: Path, seconds: float) -> dict[str, Any]:
    """Milliseconds per image of the server's own image processing."""
    processing = _processor(repository)
    (image_input,) = processing.inputs
    blobs = list(photos().values())
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        image_input({"image": np.array([[blobs[count % len(blobs)]]], dtype=object)})
        count += 1
    return {"ms_per_image": (time.perf_counter() - start) / count * 1e3}


async def _client(url: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from forwardpass.datatypes import serialize_bytes_tensor

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = []
    for name, blob in photos().items():
        # The JPEG travels as a binary BYTES tensor; the top-5 answer comes back as JSON.
        data = serialize_bytes_tensor(np.array([[blob]], dtype=object))
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(data)},
                    }
                ],
                "outputs": [{"name": "top5"}],
            }
        ).encode()
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
        requests.append(
            (name, http_request(host, port, f"/v2/models/{MODEL}/infer", header + data, headers))
        )

    def check(name: str, status: bytes, body: bytes) -> str | None:
        if b" 200 " not in status:
            return f"{status!r}: {body[:200]!r}"
        top1 = json.loads(body)["outputs"][0]["data"][0].split(":", 2)[2]
        if name in EXPECTED and top1 not in EXPECTED[name]:
            return f"{name}: top-1 {top1!r}"
        return None

    return await closed_loop(host, port, requests, check, concurrency, warmup, duration)


def role_client(url: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    return asyncio.run(_client(url, concurrency, warmup, duration))


# --------------------------------------------------------------------------- orchestration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--batch", default="1,4,8,16", help="bare session batch sizes")
    parser.add_argument("--port", type=int, default=8211)
    parser.add_argument("--model-repository", type=Path, default=None, help="reuse a build")
    parser.add_argument(
        "--decoder", choices=("pil", "opencv"), default="pil", help="image decoding library"
    )
    parser.add_argument(
        "--processing-workers",
        type=int,
        default=0,
        help="image decoding in this many worker processes on the client's core (0: threads "
        "of the server process, on the server's core)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return _dispatch(args.role)
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        repository = (
            one_thread_repository(args.model_repository, MODEL)
            if args.model_repository
            else build(Path(tmp) / "repo", args.decoder)
        )
        results["decoder"] = args.decoder
        seconds = str(max(3.0, args.duration / 3))
        results["bare"] = run_role(HERE, SERVER_CORE, "bare", str(repository), args.batch, seconds)
        results["preprocess"] = run_role(HERE, SERVER_CORE, "preprocess", str(repository), "3")
        url = f"http://127.0.0.1:{args.port}"
        results["processing_workers"] = args.processing_workers
        extra: list[str] = []
        if args.processing_workers:
            extra = ["--processing-workers", str(args.processing_workers)]
            extra += ["--processing-cpus", CLIENT_CORE]
        server = forwardpass_server(repository, args.port, extra=extra)
        with serving(server, f"{url}/v2/models/{MODEL}/ready"):
            results["served"] = run_role(
                HERE,
                CLIENT_CORE,
                "client",
                url,
                str(args.concurrency),
                str(args.warmup),
                str(args.duration),
            )
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if results["served"]["errors"] else 0


def _dispatch(role: list[str]) -> int:
    kind, *rest = role
    if kind == "bare":
        result = role_bare(Path(rest[0]), [int(b) for b in rest[1].split(",")], float(rest[2]))
    elif kind == "preprocess":
        result = role_preprocess(Path(rest[0]), float(rest[1]))
    else:
        result = role_client(rest[0], int(rest[1]), float(rest[2]), float(rest[3]))
    print(json.dumps(result))
    return 0


def report(r: dict[str, Any]) -> None:
    bare = r["bare"]
    best_batch, best = max(bare.items(), key=lambda kv: kv[1]["samples_per_s"])
    one = bare["1"]["samples_per_s"]
    served = r["served"]
    rows = [
        ("bare ORT, batch 1 (images/s)", f"{one:,.1f}", f"{bare['1']['ms_per_call_p50']:.2f} ms"),
        *(
            (f"bare ORT, batch {b} (images/s)", f"{v['samples_per_s']:,.1f}", "")
            for b, v in bare.items()
            if b != "1"
        ),
        ("server preprocessing (ms/image)", f"{r['preprocess']['ms_per_image']:.2f}", ""),
        (
            "image decoding",
            f"{r['processing_workers']} proc" if r.get("processing_workers") else "threads",
            f"worker processes on core {CLIENT_CORE}"
            if r.get("processing_workers")
            else f"in the server, core {SERVER_CORE}",
        ),
        (
            f"served JPEG -> top5, c{served['concurrency']} (infer/s)",
            f"{served['infer_per_s']:,.1f}",
            f"p50 {served['p50_ms']:.1f} ms, p99 {served['p99_ms']:.1f} ms, "
            f"{served['errors']} errors",
        ),
        (
            "served / bare best batch",
            f"{served['infer_per_s'] / best['samples_per_s']:.1%}",
            f"batch {best_batch}",
        ),
        ("served / bare batch 1", f"{served['infer_per_s'] / one:.1%}", ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")
    if served["first_error"]:
        print("first error:", served["first_error"])


if __name__ == "__main__":
    sys.exit(main())
