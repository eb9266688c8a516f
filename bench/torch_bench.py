"""A TorchScript model served by forwardpass vs a bare TorchScript loop, same core, best batch.

The model is one transformer encoder block over a [SEQ, WIDTH] sample (about 5 ms per sample
on one core at the defaults; the run prints the figure it measured). Both sides run PyTorch on
one intra-op thread on core 0:

1. the bare loop: ``torch.jit.load`` and ``module(x)`` in a loop under ``torch.inference_mode``,
   at batch sizes 1..32; the best batch size is the reference;
2. forwardpass: the same ``model.pt`` in a Triton-layout repository (``platform:
   "pytorch_libtorch"``, ``max_batch_size`` = that best batch, dynamic batching with no delay,
   ``INTRA_OP_THREAD_COUNT`` 1), driven by ``forwardpass bench`` over HTTP with binary tensors at
   concurrency 32 from core 1, one sample per request.

Target: the served throughput within 10 % of the bare loop's best.

    python bench/torch_bench.py [--duration 10] [--seq 128] [--width 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLIENT_CORE, PY, SERVER_CORE, forwardpass_server, pinned, serving

BATCHES = (1, 2, 4, 8, 16, 32)


def build(path: Path, seq: int, width: int) -> None:
    import torch

    torch.manual_seed(0)
    block = torch.nn.TransformerEncoderLayer(
        d_model=width, nhead=4, dim_feedforward=4 * width, batch_first=True, dropout=0.0
    ).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; Triton serves it
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(block, torch.zeros(2, seq, width), check_trace=False)
        torch.jit.save(traced, str(path))


def raw(model: Path, seq: int, width: int, seconds: float) -> list[dict[str, Any]]:
    """The bare TorchScript loop (run in a pinned child process: see ``--raw``)."""
    import torch

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(model))
    results = []
    for batch in BATCHES:
        x = torch.randn(batch, seq, width)
        with torch.inference_mode():
            for _ in range(3):
                module(x)
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                module(x)
                calls += 1
            elapsed = time.perf_counter() - start
        results.append(
            {
                "batch": batch,
                "samples_per_s": calls * batch / elapsed,
                "ms_per_sample": elapsed * 1000 / (calls * batch),
            }
        )
    return results


def write_repository(root: Path, seq: int, width: int, max_batch: int) -> None:
    build(root / "block" / "1" / "model.pt", seq, width)
    (root / "block" / "config.pbtxt").write_text(
        f"""platform: "pytorch_libtorch"
max_batch_size: {max_batch}
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {seq}, {width} ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {seq}, {width} ] }} ]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "INTRA_OP_THREAD_COUNT" value: {{ string_value: "1" }} }}
"""
    )


def served(url: str, duration: float) -> dict[str, Any]:
    cmd = pinned(
        CLIENT_CORE, PY, "-m", "forwardpass", "bench", "block", "--url", url, "-c", "32",
        "-d", str(duration), "--warmup", "2", "--binary", "--json",
    )  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out)["results"][0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of served load")
    parser.add_argument("--raw-seconds", type=float, default=3.0, help="seconds per batch size")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--port", type=int, default=8211)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--raw", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw is not None:  # the pinned child
        print(json.dumps(raw(args.raw, args.seq, args.width, args.raw_seconds)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.pt"
        build(probe, args.seq, args.width)
        cmd = pinned(
            SERVER_CORE, PY, __file__, "--raw", str(probe), "--seq", str(args.seq),
            "--width", str(args.width), "--raw-seconds", str(args.raw_seconds),
        )  # fmt: skip
        bare = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        best = max(bare, key=lambda r: r["samples_per_s"])
        repo = Path(tmp) / "repo"
        write_repository(repo, args.seq, args.width, best["batch"])
        url = f"http://127.0.0.1:{args.port}"
        with serving(forwardpass_server(repo, args.port), url + "/v2/models/block/ready"):
            result = served(url, args.duration)

    throughput = float(result["throughput_infer_per_s"])
    ratio = throughput / best["samples_per_s"]
    for r in bare:
        print(
            f"bare TorchScript batch {r['batch']:>2}: {r['samples_per_s']:8.1f} samples/s "
            f"({r['ms_per_sample']:.2f} ms/sample)"
        )
    print(
        f"forwardpass c32 binary, max_batch_size {best['batch']}: {throughput:8.1f} infer/s, "
        f"p50 {result['latency_ms']['p50']:.1f} ms, errors {result.get('errors', 0)}"
    )
    verdict = "within" if ratio >= 0.9 else "NOT within"
    print(f"served / bare best = {ratio:.3f} ({verdict} the 10 % target)")
    if args.json:
        args.json.write_text(json.dumps({"bare": bare, "served": result, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
