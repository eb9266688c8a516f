"""The Python backend against ONNX Runtime on the same server: a model that returns its input.

Two models in one repository, the same config (FP32 ``[-1, 4]``, ``max_batch_size`` 64,
dynamic batching with no delay): ``identity_onnx`` (an ONNX ``Identity``) and ``identity_py``
(a Triton ``model.py`` whose ``execute`` returns its input, run in its stub process), and the
same ``model.py`` under Triton's own Python backend when bench/triton_peer.py finds it. The
server is pinned to core 0, the load (``forwardpass bench``, concurrency 32, JSON) to core 1,
as in serve_bench.py. Target: the Python model keeps >= 50 % of the ONNX model's throughput.

    python bench/python_backend_bench.py [--duration 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_peer
from common import CLIENT_CORE, PY, SERVER_CORE, forwardpass_server, pinned, serving

CONFIG = """
name: "{name}"
backend: "{backend}"
max_batch_size: 64
dynamic_batching {{ }}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

MODEL_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]
            )
            for r in requests
        ]
"""


def build(root: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    onnx_dir = root / "identity_onnx" / "1"
    onnx_dir.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, onnx_dir / "model.onnx")
    (root / "identity_onnx" / "config.pbtxt").write_text(
        CONFIG.format(name="identity_onnx", backend="onnxruntime")
    )
    py_dir = root / "identity_py" / "1"
    py_dir.mkdir(parents=True)
    (py_dir / "model.py").write_text(MODEL_PY)
    (root / "identity_py" / "config.pbtxt").write_text(
        CONFIG.format(name="identity_py", backend="python")
    )


def load(url: str, model: str, duration: float) -> dict[str, Any]:
    cmd = [PY, "-m", "forwardpass", "bench", model, "--url", url, "-c", "32",
           "-d", str(duration), "--warmup", "1", "--json"]  # fmt: skip
    out = subprocess.run(pinned(CLIENT_CORE, *cmd), check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout)["results"][0]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build(repo)
        url = "http://127.0.0.1:8211"
        with serving(forwardpass_server(repo, 8211), url + "/v2/health/ready"):
            for model in ("identity_onnx", "identity_py"):
                results[model] = load(url, model, args.duration)
        if triton_peer.available():
            # The same model.py and config under Triton's own Python backend, same load.
            troot = Path(tmp) / "triton"
            shutil.copytree(repo / "identity_py", troot / "identity_py")
            triton = triton_peer.prepare(Path(tmp))
            command = pinned(SERVER_CORE, *triton_peer.command(triton, troot, 8221, 8222))
            with serving(command, "http://127.0.0.1:8221/v2/models/identity_py/ready",
                         env=triton_peer.environment()):  # fmt: skip
                results["triton_identity_py"] = load(
                    "http://127.0.0.1:8221", "identity_py", args.duration
                )
    onnx_rate = float(results["identity_onnx"]["throughput_infer_per_s"])
    py_rate = float(results["identity_py"]["throughput_infer_per_s"])
    ratio = py_rate / onnx_rate
    for model in ("identity_onnx", "identity_py", "triton_identity_py"):
        if model not in results:
            continue
        r = results[model]
        latency = r["latency_ms"]
        print(
            f"{model:14s} c32  {float(r['throughput_infer_per_s']):9,.0f} infer/s  "
            f"p50 {float(latency['p50']):.2f} ms  p99 {float(latency['p99']):.2f} ms"
        )
    print(f"python / onnx throughput: {ratio:.0%} (target >= 50%)")
    if "triton_identity_py" in results:
        triton_rate = float(results["triton_identity_py"]["throughput_infer_per_s"])
        print(f"forwardpass python / Triton python backend: {py_rate / triton_rate:.0%}")
    results["ratio"] = ratio
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
