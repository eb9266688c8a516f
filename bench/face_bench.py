"""Face detection through a real server vs facenet-pytorch's MTCNN, pictures/s on one core.

The zoo's ``mtcnn`` ensemble is built (or taken from ``--model-repository``) with its three
ONNX networks on one intra-op thread, then, within one run so the machine's noise cancels
as far as it can:

1. **reference**: facenet-pytorch's own ``MTCNN.detect`` (eager torch, one thread) on core 0,
   over the same photographs (see bench/facenet_reference.py for how it is imported where
   torchvision is missing);
2. **served**: ``forwardpass serve`` pinned to core 0, and a closed-loop client pinned to core
   1 (``--concurrency`` workers, one keep-alive connection each) sending the JPEG files as
   BYTES (binary tensor extension) and asking for the boxes; every answer's face count is
   checked against the photo's.

The photos are scikit-image's: astronaut and camera (one face each), coffee and chelsea (a
cup, a cat: none), as JPEG files. The figure of merit is served pictures/s over reference
pictures/s.

    python bench/face_bench.py [--concurrency 2] [--duration 15] [--json out.json]

On a machine shared with other work, treat one run as one noisy sample.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # a script beside its helpers, not a package
    CLIENT_CORE,
    SERVER_CORE,
    closed_loop,
    forwardpass_server,
    http_request,
    run_role,
    serving,
)

HERE = Path(__file__).resolve()
MODEL = "mtcnn"
#: Faces in each photo (what both detectors find).
FACES = {"astronaut": 1, "camera": 1, "coffee": 0, "chelsea": 0}


def pictures() -> dict[str, np.ndarray]:
    """The photos as RGB uint8 arrays, each after a JPEG round trip (what the server gets)."""
    from PIL import Image

    return {name: np.asarray(Image.open(io.BytesIO(blob))) for name, blob in jpegs().items()}


def jpegs() -> dict[str, bytes]:
    import skimage.data
    from PIL import Image

    out = {}
    for name in FACES:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(
            buffer, format="JPEG", quality=90
        )
        out[name] = buffer.getvalue()
    return out


def build(repository: Path) -> Path:
    """The zoo ensemble, with its ONNX networks on one intra-op thread."""
    from forwardpass.repository import ModelRepository
    from forwardpass.repository.pbtxt_writer import config_to_pbtxt
    from forwardpass.zoo import add

    add(MODEL, repository)
    models = ModelRepository(repository)
    for net in ("pnet", "rnet", "onet"):
        name = f"{MODEL}_{net}"
        config = models.read(name).config
        parameters = MappingProxyType({**config.parameters, "intra_op_thread_count": "1"})
        config = dataclasses.replace(config, parameters=parameters)
        (repository / name / "config.pbtxt").write_text(config_to_pbtxt(config))
    return repository


# --------------------------------------------------------------------------- roles (core 0/1)


def role_reference(seconds: float) -> dict[str, Any]:
    """pictures/s of facenet-pytorch's MTCNN on one thread, round robin over the photos."""
    import torch
    from facenet_reference import detect, load_mtcnn

    torch.set_num_threads(1)
    detector = load_mtcnn()
    photos = list(pictures().items())
    for name, pixels in photos:  # warm up, and check the face counts
        found = len(detect(detector, pixels)[0])
        if found != FACES[name]:
            raise SystemExit(f"reference: {name} has {found} faces, expected {FACES[name]}")
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with torch.no_grad():
            detect(detector, photos[count % len(photos)][1])
        count += 1
    elapsed = time.perf_counter() - start
    return {"pictures_per_s": count / elapsed, "ms_per_picture": elapsed / count * 1e3}


async def _client(url: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from forwardpass.datatypes import serialize_bytes_tensor

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = []
    for name, blob in jpegs().items():
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
                "outputs": [{"name": "boxes"}],
            }
        ).encode()
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
        path = f"/v2/models/{MODEL}/infer"
        requests.append((name, http_request(host, port, path, header + data, headers)))

    def check(name: str, status: bytes, body: bytes) -> str | None:
        if b" 200 " not in status:
            return f"{status!r}: {body[:200]!r}"
        faces = json.loads(body)["outputs"][0]["shape"][0]
        return None if faces == FACES[name] else f"{name}: {faces} faces, not {FACES[name]}"

    return await closed_loop(host, port, requests, check, concurrency, warmup, duration)


def role_client(url: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    return asyncio.run(_client(url, concurrency, warmup, duration))


# --------------------------------------------------------------------------- orchestration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=8213)
    parser.add_argument("--model-repository", type=Path, default=None, help="reuse a build")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return _dispatch(args.role)
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "photos": list(FACES)}
    with tempfile.TemporaryDirectory() as tmp:
        repository = args.model_repository or build(Path(tmp) / "repo")
        results["reference"] = run_role(HERE, SERVER_CORE, "reference", str(args.duration))
        url = f"http://127.0.0.1:{args.port}"
        with serving(forwardpass_server(repository, args.port), f"{url}/v2/models/{MODEL}/ready"):
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
    if kind == "reference":
        result = role_reference(float(rest[0]))
    else:
        result = role_client(rest[0], int(rest[1]), float(rest[2]), float(rest[3]))
    print(json.dumps(result))
    return 0


def report(r: dict[str, Any]) -> None:
    ref, served = r["reference"], r["served"]
    ratio = served["infer_per_s"] / ref["pictures_per_s"] if ref["pictures_per_s"] else 0.0
    rows = [
        ("facenet-pytorch MTCNN, 1 thread (pictures/s)", f"{ref['pictures_per_s']:.2f}"),
        (
            f"forwardpass serve, concurrency {served['concurrency']} (pictures/s)",
            f"{served['infer_per_s']:.2f}",
        ),
        ("served p50 / p99 (ms)", f"{served['p50_ms'] or 0:.0f} / {served['p99_ms'] or 0:.0f}"),
        ("served / reference", f"{ratio:.2f}x"),
        ("errors", f"{served['errors']} {served['first_error']}".strip()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    raise SystemExit(main())
