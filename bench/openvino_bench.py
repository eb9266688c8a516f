"""OpenVINO against ONNX Runtime's default CPU provider, and BF16 against FP32, side by side.

Usage::

    python bench/openvino_bench.py [--model-repository DIR] [--models efficientnet-lite0,...]
        [--threads 1,2] [--batch-sizes 1,8] [--seconds 3] [--json]

For each model (the zoo's ``efficientnet-lite0`` and ``all-minilm-l6-v2`` by default, built
into ``--model-repository`` when missing: ``forwardpass zoo add``), the same ONNX file runs on

- ``ort-cpu``: ONNX Runtime, CPUExecutionProvider (what ``backend: "onnxruntime"`` serves),
- ``openvino-fp32``: the OpenVINO runtime, CPU device, ``INFERENCE_PRECISION_HINT f32``,
- ``openvino-bf16``: the same with ``bf16`` (only where the CPU computes in BF16; otherwise
  reported as skipped, with OpenVINO's capabilities: it would silently run FP32),

at each thread count (``intra_op_num_threads`` / ``INFERENCE_NUM_THREADS``, one stream) and
batch size, interleaved in rounds so a drift of the machine touches every engine alike. Each
row gives the batch's p50 and p99 latency and its throughput (samples/s = batch / p50), the
ratio to ``ort-cpu`` at the same threads and batch, and the agreement of the outputs with
``ort-cpu`` on the same inputs: top-1 agreement for EfficientNet (its logits), cosine similarity
of the pooled embeddings for MiniLM, plus the largest absolute difference.

Sessions run in this process, one at a time; run it on a quiet machine, pinned
(``taskset -c 0,1``) so one and two threads mean cores, not time slices.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.optimize.measure import open_session
from forwardpass.repository import ModelRepository
from forwardpass.runtime.onnx import describe_onnx

ENGINES = {
    "ort-cpu": ("CPUExecutionProvider",),
    "openvino-fp32": ("openvino:CPU:f32",),
    "openvino-bf16": ("openvino:CPU:bf16",),
}
DEFAULT_MODELS = ("efficientnet-lite0", "all-minilm-l6-v2")
SEQUENCE = 128  # MiniLM tokens per sample


def _inputs(model_file: Path, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs for the model file: images in [-1, 1]; token ids, a full mask, zeros."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in describe_onnx(model_file).inputs:
        dims = [batch if i == 0 else (d if d > 0 else SEQUENCE) for i, d in enumerate(spec.dims)]
        dtype = spec.datatype.numpy
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.uniform(-1, 1, dims).astype(dtype)
        elif "mask" in spec.name:
            feed[spec.name] = np.ones(dims, dtype)
        elif "type" in spec.name:
            feed[spec.name] = np.zeros(dims, dtype)
        else:
            feed[spec.name] = rng.integers(1000, 20000, dims).astype(dtype)
    return feed


def _agreement(kind: str, ref: np.ndarray, out: np.ndarray, mask: np.ndarray | None) -> dict:
    out = out.astype(np.float32)
    ref = ref.astype(np.float32)
    result: dict[str, float] = {"max_abs_diff": float(np.max(np.abs(out - ref)))}
    if kind == "embedding":
        if ref.ndim == 3:  # token embeddings: mean-pool over the mask, as sentence-transformers
            weights = (mask if mask is not None else np.ones(ref.shape[:2]))[..., None]
            ref = (ref * weights).sum(1) / weights.sum(1)
            out = (out * weights).sum(1) / weights.sum(1)
        cos = (ref * out).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(out, axis=-1))
        result["cosine_min"] = float(cos.min())
        result["cosine_mean"] = float(cos.mean())
    else:
        result["top1_agreement"] = float((ref.argmax(-1) == out.argmax(-1)).mean())
    return result


def _time(session: Any, feed: dict[str, np.ndarray], seconds: float) -> list[float]:
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def _ensure(repository: Path, name: str) -> Path:
    repo = ModelRepository(repository)
    if name not in repo.list_models():
        from forwardpass.zoo import add

        print(f"building zoo model {name} into {repository} ...", file=sys.stderr)
        add(name, repository)
    entry = ModelRepository(repository).read(name)
    version = entry.versions[-1]
    return entry.version_dir(version) / (entry.config.default_model_filename or "model.onnx")


#: The /proc/cpuinfo flags that decide BF16 and INT8 arithmetic on x86.
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpu_flags() -> str:
    """Which of :data:`_FLAGS` this CPU reports, and its model name (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no /proc/cpuinfo"
    lines = text.splitlines()
    flags = set(next((ln for ln in lines if ln.startswith("flags")), "").split())
    model = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "?")
    has = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in _FLAGS)
    return f"/proc/cpuinfo of {model}: {has}"


def bench_model(
    name: str,
    model_file: Path,
    threads: list[int],
    batches: list[int],
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    from forwardpass.runtime.openvino import cpu_has_bf16

    kind = "embedding" if "minilm" in name else "classification"
    engines = dict(ENGINES)
    skipped: dict[str, str] = {}
    if not cpu_has_bf16():
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        skipped["openvino-bf16"] = (
            f"this CPU does not compute in BF16 (OpenVINO capabilities: {', '.join(caps)}; "
            f"{_cpu_flags()}); the hint would silently run FP32"
        )
        del engines["openvino-bf16"]
    rows: list[dict[str, Any]] = []
    for n in threads:
        sessions = {e: open_session(model_file, providers, n) for e, providers in engines.items()}
        precisions = {e: getattr(s, "precision", "fp32") for e, s in sessions.items()}
        for batch in batches:
            feed = _inputs(model_file, batch)
            mask = next((v for k, v in feed.items() if "mask" in k), None)
            names = [o.name for o in sessions["ort-cpu"].get_outputs()]
            primary = next((n for n in names if "sentence" in n), names[0])
            outputs = {e: s.run([primary], feed)[0] for e, s in sessions.items()}
            samples: dict[str, list[float]] = {e: [] for e in sessions}
            for _ in range(rounds):
                for engine, session in sessions.items():
                    samples[engine] += _time(session, feed, seconds / rounds)
            base = float(np.percentile(samples["ort-cpu"], 50))
            for engine in sessions:
                p50 = float(np.percentile(samples[engine], 50))
                rows.append(
                    {
                        "engine": engine,
                        "precision": precisions[engine],
                        "threads": n,
                        "batch": batch,
                        "p50_ms": p50,
                        "p99_ms": float(np.percentile(samples[engine], 99)),
                        "throughput": batch * 1000.0 / p50,
                        "speedup_vs_ort": base / p50,
                        "runs": len(samples[engine]),
                        **_agreement(kind, outputs["ort-cpu"], outputs[engine], mask),
                    }
                )
    return {
        "model": name,
        "file": str(model_file),
        "task": kind,
        "output": primary,
        "rows": rows,
        "skipped": skipped,
    }


def _print(result: dict[str, Any]) -> None:
    agree = "cosine_min" if result["task"] == "embedding" else "top1_agreement"
    print(f"\n{result['model']} ({result['file']}), output {result['output']}")
    print(
        f"{'engine':<15}{'prec':<6}{'thr':>4}{'batch':>6}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'samples/s':>11}{'vs ORT':>8}{agree:>16}{'max|diff|':>11}"
    )
    for r in result["rows"]:
        print(
            f"{r['engine']:<15}{r['precision']:<6}{r['threads']:>4}{r['batch']:>6}"
            f"{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['throughput']:>11.1f}"
            f"{r['speedup_vs_ort']:>7.2f}x{r[agree]:>16.4f}{r['max_abs_diff']:>11.2e}"
        )
    for engine, why in result["skipped"].items():
        print(f"{engine}: skipped: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0, help="per engine, thread, batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise SystemExit(
            "needs the OpenVINO runtime: pip install 'forwardpass[openvino]'"
        ) from None
    threads = [int(x) for x in args.threads.split(",")]
    batches = [int(x) for x in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="openvino-bench-") as tmp:
        repository = args.model_repository or Path(tmp) / "models"
        repository.mkdir(parents=True, exist_ok=True)
        results = [
            bench_model(
                name, _ensure(repository, name), threads, batches, args.seconds, args.rounds
            )
            for name in args.models.split(",")
        ]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            _print(result)


if __name__ == "__main__":
    main()
