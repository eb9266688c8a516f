"""forwardpass on Ray Serve against a plain Ray Serve deployment, on one local Ray cluster.

Both serve the same ONNX files of bench/models.py (``tiny`` and the compute-bound
``compute``), one sample per request, JSON, concurrency 32, driven by ``forwardpass bench``:

- forwardpass: ``forwardpass.ray.app`` on a repository holding the two models (one replica
  each, forwardpass's engine and dynamic batcher inside; an ingress deployment parses the
  wire with forwardpass's codec and coalesces concurrent requests into one handle call),
  measured on the ingress's own HTTP server (as ``forwardpass serve --ray`` serves) and,
  for reference, through Ray Serve's proxy;
- plain: the deployment a Ray Serve user writes by hand, one per model: ``__call__`` parses
  the JSON request, a ``@serve.batch`` method stacks the samples and runs one
  ``InferenceSession.run`` per batch (max batch 32, 2 ms wait), one replica, one ORT thread.

Targets (issue #13): forwardpass ≥ 5x plain on ``tiny``, ≥ 2x on ``compute``.

    python bench/ray_bench.py [--duration 20] [--cpus N] [--json]

Ray's processes are spread over the machine's cores (no pinning, unlike the single-process
benchmarks), and both sides run on the same cluster in one run, so the ratio is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
MODELS = ("tiny", "compute")
CONCURRENCY = 32
TARGETS = {"tiny": 5.0, "compute": 2.0}


class PlainOnnx:
    """A hand-written Ray Serve endpoint: enough of the V2 protocol for ``forwardpass bench``."""

    def __init__(self, model_dir: str) -> None:
        import onnxruntime as ort
        import orjson

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(Path(model_dir) / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.name = Path(model_dir).name
        features = self.session.get_inputs()[0].shape[1]
        outputs = self.session.get_outputs()[0].shape[1]
        self.metadata = orjson.dumps(
            {
                "name": self.name,
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, features]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, outputs]}],
            }
        )
        self.config = orjson.dumps({"name": self.name, "max_batch_size": 32})

    async def __call__(self, request: Any) -> Any:
        import numpy as np
        import orjson
        from starlette.responses import Response

        path = request.url.path.rstrip("/")
        if request.method == "GET":
            body = self.config if path.endswith("/config") else self.metadata
            return Response(body, media_type="application/json")
        document = orjson.loads(await request.body())
        tensor = document["inputs"][0]
        sample = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        result = await self.run(sample)
        payload = {
            "model_name": self.name,
            "outputs": [
                {
                    "name": "output",
                    "datatype": "FP32",
                    "shape": list(result.shape),
                    "data": result.ravel().tolist(),
                }
            ],
        }
        return Response(orjson.dumps(payload), media_type="application/json")

    async def run(self, sample: Any) -> Any:
        return await self._batched(sample)

    async def _batched(self, samples: list[Any]) -> list[Any]:  # wrapped by serve.batch below
        import numpy as np

        batch = np.concatenate(samples)
        (out,) = self.session.run(["output"], {"input": batch})
        sizes = np.cumsum([s.shape[0] for s in samples])[:-1]
        return list(np.split(out, sizes))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bench(url: str, model: str, duration: float) -> dict[str, Any]:
    cmd = [PY, "-m", "forwardpass", "bench", model, "--url", url, "-c", str(CONCURRENCY)]
    cmd += ["-d", str(duration), "--warmup", "2", "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out)["results"][0]
    return {
        "throughput": result["request_rate_per_s"],  # one sample per request
        "p50_ms": result["latency_ms"]["p50"],
        "p99_ms": result["latency_ms"]["p99"],
        "errors": result["errors"],
        "first_error": result["first_error"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="the cluster's CPUs")
    parser.add_argument("--json", action="store_true", help="print only the JSON results")
    args = parser.parse_args()

    import ray
    from ray import serve

    from forwardpass.ray import RayOptions
    from forwardpass.ray.cluster import deploy

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as folder:
        built = Path(folder) / "all"
        subprocess.run([PY, str(HERE / "models.py"), str(built)], check=True, capture_output=True)
        repository = Path(folder) / "repository"
        repository.mkdir()
        for model in MODELS:
            (repository / model).symlink_to(built / model)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        port = _free_port()
        url = f"127.0.0.1:{port}"
        results: dict[str, Any] = {"cpus": args.cpus, "concurrency": CONCURRENCY}
        try:
            began = time.perf_counter()
            # The two model replicas and the ingress share the cluster's CPUs.
            share = args.cpus / (len(MODELS) + 1)
            options = RayOptions(
                repository, replica_cpus=share, ingress_cpus=share, listen="127.0.0.1:0"
            )
            ingress = deploy(options, "127.0.0.1", port, timeout_s=300)
            own = ingress.http_address.remote().result(timeout_s=60)
            results["forwardpass_deploy_s"] = round(time.perf_counter() - began, 1)
            for model in MODELS:
                # As `forwardpass serve --ray` serves: the ingress's own HTTP server.
                results[f"forwardpass_{model}"] = _bench(own, model, args.duration)
                # Through Ray Serve's proxy, like the plain deployment (a hop more).
                results[f"forwardpass_proxy_{model}"] = _bench(url, model, args.duration)
            serve.delete("forwardpass")
            batched = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)(PlainOnnx._batched)
            plain_class = type("PlainOnnx", (PlainOnnx,), {"_batched": batched})
            for model in MODELS:
                deployment = serve.deployment(
                    name=f"plain_{model}", max_ongoing_requests=64, num_replicas=1
                )(plain_class)
                serve.run(
                    deployment.bind(str(built / model)),
                    name=f"plain_{model}",
                    route_prefix=f"/v2/models/{model}",
                )
                results[f"plain_{model}"] = _bench(url, model, args.duration)
                serve.delete(f"plain_{model}")
        finally:
            serve.shutdown()
            ray.shutdown()
    for model in MODELS:
        ratio = results[f"forwardpass_{model}"]["throughput"] / max(
            results[f"plain_{model}"]["throughput"], 1e-9
        )
        results[f"ratio_{model}"] = round(ratio, 2)
        results[f"target_{model}"] = TARGETS[model]
    if not args.json:
        for model in MODELS:
            fp, plain = results[f"forwardpass_{model}"], results[f"plain_{model}"]
            print(
                f"{model:8s} forwardpass {fp['throughput']:8.1f}/s"
                f"  plain {plain['throughput']:8.1f}/s  ratio {results[f'ratio_{model}']:.2f}"
                f" (target >= {TARGETS[model]})",
                file=sys.stderr,
            )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
