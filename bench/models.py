"""Build the benchmark model repository with ``onnx.helper`` (no torch needed).

Usage::

    python bench/models.py OUT_DIR [--compute-layers N | --calibrate-ms 5.0]

Writes a Triton-layout repository at OUT_DIR:

- ``tiny``: MLP 64 -> 256 -> 256 -> 10 (fp32, ReLU), input ``input`` [-1,64], output ``output``
  [-1,10]; max_batch_size 256, dynamic batching. Costs a few microseconds: it measures the
  server's per-request overhead, not the model.
- ``tiny_nobatch``: the same file with max_batch_size 0 (dims are the full shape).
- ``compute``: input ``input`` [-1,64] -> 1024 wide, then a stack of 1024x1024 MatMul+ReLU
  layers that all share one orthogonal weight (so the file stays ~4 MB and the weight stays in
  cache), -> ``output`` [-1,10]. At batch 1 each layer is a matrix-vector product, so a batch of
  32 is several times cheaper per sample: this is the model on which dynamic batching pays.
  Sized to ~5 ms per sample at batch 1 on one thread; ``--calibrate-ms`` re-tunes the depth on
  the machine at hand. max_batch_size 32, dynamic batching.
- ``compute_nobatch``: the same file with max_batch_size 0.

Every model runs with ``intra_op_thread_count`` "1", so figures compare across machines with
different core counts. Weights come from a fixed seed: the files are reproducible.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 1234
OPSET = 17
IN_FEATURES = 64
OUT_FEATURES = 10
COMPUTE_WIDTH = 1024
#: Depth that gave ~5 ms at batch 1 on one thread of an AMD EPYC (onnxruntime 1.32); the
#: time is linear in depth (~42 us per layer there). `--calibrate-ms` re-tunes it.
DEFAULT_COMPUTE_LAYERS = 116


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="forwardpass/bench/models.py",
        doc_string=doc,
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def _io(name: str, features: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", features])


def _dense(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """He-initialised weights, so activations neither vanish nor explode through ReLUs."""
    return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def build_tiny(seed: int = SEED) -> onnx.ModelProto:
    """MLP 64 -> 256 -> 256 -> 10 with ReLUs; dynamic batch."""
    rng = np.random.default_rng(seed)
    widths = [IN_FEATURES, 256, 256, OUT_FEATURES]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        inits.append(numpy_helper.from_array(_dense(rng, fan_in, fan_out), f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(fan_out, np.float32) + 0.01, f"b{i}"))
        last = i == len(widths) - 2
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], ["output" if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes, "tiny", [_io("input", IN_FEATURES)], [_io("output", OUT_FEATURES)], inits
    )
    return _model(graph, "benchmark MLP 64-256-256-10, random weights")


def build_compute(layers: int = DEFAULT_COMPUTE_LAYERS, seed: int = SEED) -> onnx.ModelProto:
    """64 -> 1024, ``layers`` x (1024x1024 MatMul + ReLU, one shared weight), 1024 -> 10."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((COMPUTE_WIDTH, COMPUTE_WIDTH)))
    # An orthogonal matrix scaled by sqrt(2) keeps the norm steady through the ReLUs: no
    # overflow, no denormals (which would make the timing depend on the data).
    shared = (q * np.sqrt(2.0)).astype(np.float32)
    inits = [
        numpy_helper.from_array(_dense(rng, IN_FEATURES, COMPUTE_WIDTH), "w_in"),
        numpy_helper.from_array(shared, "w_shared"),
        numpy_helper.from_array(_dense(rng, COMPUTE_WIDTH, OUT_FEATURES), "w_out"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["mm_in"]),
        helper.make_node("Relu", ["mm_in"], ["h0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w_shared"], [f"mm{i}"]))
        nodes.append(helper.make_node("Relu", [f"mm{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["output"]))
    graph = helper.make_graph(
        nodes, "compute", [_io("input", IN_FEATURES)], [_io("output", OUT_FEATURES)], inits
    )
    return _model(graph, f"benchmark compute-bound model: {layers} shared 1024x1024 layers")


def _config(name: str, max_batch_size: int, delay_us: int = 0) -> str:
    # With max_batch_size 0 the dims are the full shape, batch dimension included.
    in_dims = f"[ {IN_FEATURES} ]" if max_batch_size else f"[ -1, {IN_FEATURES} ]"
    out_dims = f"[ {OUT_FEATURES} ]" if max_batch_size else f"[ -1, {OUT_FEATURES} ]"
    batching = "dynamic_batching { }\n" if max_batch_size else ""
    if max_batch_size and delay_us:
        # The throughput setting: hold a batch until it reaches half the maximum or the delay
        # passes. Half, not all: with a closed loop of max_batch_size clients, two half batches
        # alternate, so one computes while the server reads and answers the other's requests.
        batching = (
            f"dynamic_batching {{\n  preferred_batch_size: [ {max_batch_size // 2} ]\n"
            f"  max_queue_delay_microseconds: {delay_us}\n}}\n"
        )
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"{_tensor_block('input', 'input', in_dims)}"
        f"{_tensor_block('output', 'output', out_dims)}"
        f"{batching}"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
        'parameters {\n  key: "intra_op_thread_count"\n  value: { string_value: "1" }\n}\n'
    )


def _tensor_block(section: str, name: str, dims: str) -> str:
    return (
        f"{section} [\n  {{\n"
        f'    name: "{name}"\n    data_type: TYPE_FP32\n    dims: {dims}\n'
        "  }\n]\n"
    )


def _write(
    root: Path, name: str, model_bytes: bytes, max_batch_size: int, delay_us: int = 0
) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    path = folder / "1" / "model.onnx"
    path.write_bytes(model_bytes)
    (folder / "config.pbtxt").write_text(_config(name, max_batch_size, delay_us))
    return path


def time_batch1(model: onnx.ModelProto, seconds: float = 1.0) -> float:
    """Median seconds per batch-1 call on one intra-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {"input": np.random.default_rng(0).random((1, IN_FEATURES), dtype=np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def calibrate(target_ms: float) -> int:
    """The compute depth that takes ``target_ms`` at batch 1 here.

    Time is linear in depth; two depths give the slope and the fixed cost of a call.
    """
    shallow, deep = 20, 60
    t_shallow = time_batch1(build_compute(shallow))
    t_deep = time_batch1(build_compute(deep))
    per_layer = max((t_deep - t_shallow) / (deep - shallow), 1e-9)
    fixed = max(t_shallow - shallow * per_layer, 0.0)
    layers = max(1, round((target_ms / 1e3 - fixed) / per_layer))
    print(f"calibration: {per_layer * 1e6:.1f} us/layer at batch 1 -> {layers} layers")
    return layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the benchmark model repository.")
    parser.add_argument("out_dir", type=Path)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compute-layers", type=int, default=DEFAULT_COMPUTE_LAYERS)
    group.add_argument(
        "--calibrate-ms",
        type=float,
        default=None,
        help="measure this machine and size `compute` to take this long at batch 1",
    )
    parser.add_argument(
        "--no-timing", action="store_true", help="skip timing `compute` after writing it"
    )
    args = parser.parse_args(argv)

    layers = calibrate(args.calibrate_ms) if args.calibrate_ms else args.compute_layers
    tiny = build_tiny().SerializeToString()
    compute_model = build_compute(layers)
    compute = compute_model.SerializeToString()
    root: Path = args.out_dir
    for name, blob, mbs, delay_us in (
        ("tiny", tiny, 256, 0),
        ("tiny_nobatch", tiny, 0, 0),
        ("compute", compute, 32, 0),
        ("compute_delay", compute, 32, 10_000),
        ("compute_nobatch", compute, 0, 0),
    ):
        path = _write(root, name, blob, mbs, delay_us)
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB  max_batch_size {mbs}")
    if not args.no_timing:
        ms = time_batch1(compute_model) * 1e3
        print(f"compute: {layers} layers, {ms:.2f} ms at batch 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
