"""Triton itself as the peer in side-by-side figures: the real ``tritonserver`` binary.

The ``nvidia-pytriton`` wheel (Python 3.12) ships tritonserver with only the Python backend, so
the peer serves the benchmark's tiny MLP as a ``backend: "python"`` model that runs the same
weights in NumPy (one matmul chain per batch, the same arithmetic ONNX Runtime does on one core).
``prepare()`` lays the binary out the way pytriton does (a copy with the stub for the running
interpreter's version beside the Python backend) in a private folder.

Set up once: ``python3.12 -m venv /work/tritonenv && /work/tritonenv/bin/pip install
nvidia-pytriton==0.7.0`` (or point ``FORWARDPASS_TRITON_ENV`` at such a virtualenv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

TRITON_ENV = Path(os.environ.get("FORWARDPASS_TRITON_ENV", "/work/tritonenv"))

_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = args["model_repository"] + "/" + args["model_version"]
        w = np.load(here + "/weights.npz")
        self.layers = [(w[f"w{i}"], w[f"b{i}"]) for i in range(len(w.files) // 2)]

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "input").as_numpy() for r in requests]
        y = np.concatenate(xs) if len(xs) > 1 else xs[0]
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            y = y @ w + b
            if i < last:
                np.maximum(y, 0, out=y)
        out, start = [], 0
        for x in xs:
            part = y[start : start + len(x)]
            start += len(x)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("output", part)]))
        return out
"""

_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 256
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {inputs} ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {outputs} ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def available() -> bool:
    return (TRITON_ENV / "bin" / "python").exists() and _dist().exists()


def _dist() -> Path:
    (site,) = (TRITON_ENV / "lib").glob("python3.*/site-packages")
    return site / "pytriton" / "tritonserver"


def prepare(workdir: Path) -> Path:
    """A runnable copy of tritonserver under ``workdir``; returns its folder."""
    dist = _dist()
    target = workdir / "tritonserver"
    if not target.exists():
        shutil.copytree(dist, target, ignore=shutil.ignore_patterns("python_backend_stubs"))
        version = dist.parent.parent.parent.name.removeprefix("python")  # "3.12"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy(stub, target / "backends" / "python" / "triton_python_backend_stub")
    return target


def write_tiny(repository: Path, model: onnx.ModelProto, name: str = "tiny") -> None:
    """The MLP ``model`` (MatMul/Add/Relu chain) as a Python-backend model in ``repository``."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul":
            weights[f"w{len(weights) // 2}"] = inits[node.input[1]].astype(np.float32)
        elif node.op_type == "Add":
            weights[f"b{(len(weights) - 1) // 2}"] = inits[node.input[1]].astype(np.float32)
    folder = repository / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    np.savez(folder / "1" / "weights.npz", **weights)
    (folder / "1" / "model.py").write_text(_MODEL_PY)
    first, last = weights["w0"], weights[f"w{len(weights) // 2 - 1}"]
    (folder / "config.pbtxt").write_text(
        _CONFIG.format(name=name, inputs=first.shape[0], outputs=last.shape[1])
    )


def command(triton: Path, repository: Path, http_port: int, grpc_port: int) -> list[str]:
    return [
        str(triton / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={triton / 'backends'}",
        f"--cache-directory={triton / 'caches'}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--log-verbose=0",
    ]


def environment() -> dict[str, str]:
    """The stub runs the virtualenv's Python (NumPy there) and finds pytriton's shared libs."""
    env = dict(os.environ)
    site = _dist().parent.parent
    libs = [p for p in (site / "nvidia_pytriton.libs", _dist() / "external_libs") if p.exists()]
    # The stub links libpython of the virtualenv's base interpreter.
    home = (TRITON_ENV / "pyvenv.cfg").read_text().split("home = ", 1)[1].split("\n", 1)[0]
    libs.append(Path(home).parent / "lib")
    env["LD_LIBRARY_PATH"] = ":".join([*map(str, libs), env.get("LD_LIBRARY_PATH", "")])
    env["PATH"] = f"{TRITON_ENV / 'bin'}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(TRITON_ENV)
    return env


def start(triton: Path, repository: Path, http_port: int, grpc_port: int) -> subprocess.Popen:
    return subprocess.Popen(
        command(triton, repository, http_port, grpc_port),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
