"""Structured pruning of EfficientNet-Lite0: FLOPs, CPU latency and top-1 agreement.

Usage::

    python bench/prune_bench.py [--model-repository DIR] [--reduction 0.4] [--steps 20]
                                [--views 192] [--reconstruct 96] [--score activation]
                                [--block-views 512] [--block-steps 300] [--keep FILE]
                                [--iterations 200] [--json]

It builds the zoo model ``efficientnet-lite0`` (or takes it from ``--model-repository``),
prunes the expansion channels of its inverted-residual blocks to ``--reduction`` fewer FLOPs
(:func:`forwardpass.optimize.pruning.prune_structured`, ``layers="expansion"``), re-fits each
block's projection by least squares on ``--reconstruct`` views and fine-tunes by distillation
from the original for at most ``--steps`` steps on ``--views`` augmented views of the photos
scikit-image and scikit-learn ship (:mod:`forwardpass.optimize.photos`; three photos in four
are trained on; the fine-tune runs on ``--fit-views`` of them if more, of which the first are
the others' views too, ``--fit-epochs`` times; ``--validation-views`` new views of the
training photos judge it every 25 steps, and its best state is kept).
With ``--block-views N``, between the re-fit and the fine-tune each changed
block is trained alone for ``--block-steps`` steps on N views (of which the first
``--views`` are the ones above) to reproduce the original block's output
(:mod:`forwardpass.optimize.blocks`). It then reports, original against pruned, on this CPU:

- latency at batch 1 on one intra-op thread (ONNX Runtime, both sessions timed in
  interleaved rounds, median and p90);
- top-1 agreement with the original on new augmented views of the *training* photos and on
  views of the held-out photos, which were never trained on; and, as a ceiling to read them
  against, the original's own top-1 stability: how often it gives two views of the same photo
  (the same augmentations, other seeds) the same top-1.

Training time is bounded by ``--steps`` (0: least squares only). Run briefly with small
numbers to check it works; measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "efficientnet-lite0"


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latencies(paths: dict[str, Path], sample: np.ndarray, iterations: int) -> dict[str, Any]:
    """Batch-1 latency (ms) of each model, timed in interleaved rounds of ten."""
    sessions = {name: _session(path) for name, path in paths.items()}
    feed = {"input": sample[:1]}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        for _ in range(5):
            session.run(None, feed)
    for _ in range(max(1, iterations // 10)):
        for name, session in sessions.items():
            for _ in range(10):
                start = time.perf_counter()
                session.run(None, feed)
                times[name].append((time.perf_counter() - start) * 1000)
    return {
        name: {
            "p50_ms": statistics.median(values),
            "p90_ms": float(np.percentile(values, 90)),
            "runs": len(values),
        }
        for name, values in times.items()
    }


def kernel_ms(path: Path, sample: np.ndarray, runs: int = 20) -> float:
    """Sum over nodes of each node's fastest kernel time (ms) in ONNX Runtime's profile.

    Batch 1, one thread. Other processes only ever add time, so on a loaded machine this is
    a steadier comparison than wall-clock percentiles (it leaves out time between kernels).
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="forwardpass-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {"input": sample[:1]})
        events = json.loads(Path(session.end_profiling()).read_text())
    fastest: dict[str, float] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            fastest[name] = min(fastest.get(name, float("inf")), float(event["dur"]))
    return sum(fastest.values()) / 1000


def agreement(original: np.ndarray, pruned: np.ndarray) -> float:
    return float(np.mean(original.argmax(1) == pruned.argmax(1)))


def confident(original: np.ndarray, pruned: np.ndarray, floor: float = 0.5) -> dict[str, float]:
    """Top-1 agreement on the views where the original's top-1 probability is >= ``floor``."""
    logits = original - original.max(1, keepdims=True)
    top = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).max(1)
    sure = top >= floor
    share = float(sure.mean())
    return {"share": share, "agreement": agreement(original[sure], pruned[sure]) if share else 0.0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnx
    import torch

    from forwardpass.optimize.blocks import BlockSettings
    from forwardpass.optimize.photos import photo_views, split_photos
    from forwardpass.optimize.pruning import PruneOptions, prune_structured, run_onnx
    from forwardpass.optimize.training import FitSettings

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="forwardpass-prune-bench-") as tmp:
        work = Path(tmp)
        repository = args.model_repository
        if repository is None or not (repository / MODEL).is_dir():
            from forwardpass.zoo import add

            repository = repository or work / "repository"
            add(MODEL, repository)
        source = repository / MODEL / "1" / "model.onnx"
        train_photos, held_photos = split_photos()
        count = max(args.views, args.block_views, args.fit_views)
        train = photo_views(count, photos=train_photos, seed=args.seed, mix=args.mix)
        validation = None
        if args.validation_views:  # early stopping on new views of the training photos
            validation = photo_views(args.validation_views, photos=train_photos, seed=args.seed + 5)
        new_views = photo_views(args.eval_views, photos=train_photos, seed=args.seed + 1)
        unseen = photo_views(args.eval_views, photos=held_photos, seed=args.seed + 2)
        options = PruneOptions(
            flops_reduction=args.reduction,
            score=args.score,
            fit=FitSettings(
                epochs=args.fit_epochs,
                max_steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                temperature=args.temperature,
                seed=args.seed,
            ),
            probe_samples=min(64, args.views),
            channel_multiple=args.channel_multiple,
            layers=args.layers,
            reconstruct_samples=min(args.reconstruct, args.views),
            speedup=args.speedup,
            sensitivity_samples=args.sensitivity_views,
            ridge=args.ridge,
            block_samples=args.block_views,
            blocks=BlockSettings(
                steps=max(1, args.block_steps),
                batch_size=args.block_batch_size,
                learning_rate=args.block_learning_rate,
                all_blocks=args.all_blocks,
                seed=args.seed,
            ),
        )
        pruned = work / "pruned.onnx"
        start = time.perf_counter()
        result = prune_structured(
            onnx.load(str(source)), pruned, train, None, options, validation=validation
        )
        seconds = time.perf_counter() - start
        if args.keep:
            args.keep.parent.mkdir(parents=True, exist_ok=True)
            args.keep.write_bytes(pruned.read_bytes())
        answers = {
            name: (run_onnx(source, x), run_onnx(pruned, x))
            for name, x in (("new_views", new_views), ("unseen_photos", unseen))
        }
        # The teacher's own ceiling: view i of another seed is a view of the same photo.
        stability = {
            name: agreement(answers[name][0], run_onnx(source, photo_views(n, photos=p, seed=s)))
            for name, p, s, n in (
                ("new_views", train_photos, args.seed + 3, len(new_views)),
                ("unseen_photos", held_photos, args.seed + 4, len(unseen)),
            )
        }
        timing = latencies({"original": source, "pruned": pruned}, unseen, args.iterations)
        kernels = {"original": kernel_ms(source, unseen), "pruned": kernel_ms(pruned, unseen)}
        return {
            "model": MODEL,
            "flops": {
                "original": result.flops_before,
                "pruned": result.flops_after,
                "reduction": result.reduction,
            },
            "parameters": {"original": result.parameters_before, "pruned": result.parameters_after},
            "size_bytes": {"original": source.stat().st_size, "pruned": pruned.stat().st_size},
            "latency_batch1_1thread": timing,
            "speedup": timing["original"]["p50_ms"] / timing["pruned"]["p50_ms"],
            "kernel_ms": kernels,
            "kernel_speedup": kernels["original"] / kernels["pruned"],
            "predicted_speedup": result.predicted_speedup,
            "top1_agreement": {k: agreement(*v) for k, v in answers.items()},
            "teacher_top1_stability": stability,
            "top1_agreement_confident": {k: confident(*v) for k, v in answers.items()},
            "training": {
                "seconds": seconds,
                "views": len(train),
                "photos": list(train_photos),
                "held_out_photos": list(held_photos),
                "steps": args.steps,
                "reconstructed_layers": result.reconstructed,
                "blocks": [
                    {"output": b.output, "before": b.error_before, "after": b.error_after}
                    for b in result.blocks
                ],
                "losses": list(result.losses),
                "validation": [list(v) for v in result.validation],
            },
            "notes": result.notes(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path)
    parser.add_argument("--reduction", type=float, default=0.4)
    parser.add_argument(
        "--speedup",
        type=float,
        default=0.0,
        help="allocate by sensitivity to this predicted speed-up (0: uniform, --reduction)",
    )
    parser.add_argument("--sensitivity-views", type=int, default=64)
    parser.add_argument("--ridge", type=float, default=1e-3, help="least-squares ridge term")
    parser.add_argument("--mix", type=float, default=0.0, help="share of mixed training views")
    parser.add_argument("--layers", choices=("all", "expansion"), default="expansion")
    parser.add_argument(
        "--score", choices=("l1", "activation", "sensitivity"), default="activation"
    )
    parser.add_argument("--steps", type=int, default=20, help="fine-tune steps (0: none)")
    parser.add_argument("--views", type=int, default=192, help="augmented training views")
    parser.add_argument("--reconstruct", type=int, default=96, help="views for least squares")
    parser.add_argument("--eval-views", type=int, default=64)
    parser.add_argument(
        "--block-views", type=int, default=0, help="views for block-wise training (0: none)"
    )
    parser.add_argument("--block-steps", type=int, default=300, help="Adam steps per block")
    parser.add_argument("--block-batch-size", type=int, default=16)
    parser.add_argument("--block-learning-rate", type=float, default=5e-4)
    parser.add_argument("--all-blocks", action="store_true", help="train unchanged blocks too")
    parser.add_argument("--keep", type=Path, help="copy the pruned model here")
    parser.add_argument(
        "--fit-views", type=int, default=0, help="views the fine-tune trains on (at least --views)"
    )
    parser.add_argument("--fit-epochs", type=int, default=10_000, help="passes over them")
    parser.add_argument(
        "--validation-views",
        type=int,
        default=0,
        help="new views of the training photos that stop the fine-tune early (0: none)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--channel-multiple", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=200, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lat = report["latency_batch1_1thread"]
    print(
        f"{MODEL}: FLOPs {report['flops']['original']:,} → {report['flops']['pruned']:,} "
        f"(−{report['flops']['reduction']:.1%})"
    )
    print(
        f"latency batch 1, 1 thread: {lat['original']['p50_ms']:.2f} ms → "
        f"{lat['pruned']['p50_ms']:.2f} ms ({report['speedup']:.2f}× faster)"
    )
    print(
        f"kernel time (fastest per node): {report['kernel_ms']['original']:.2f} ms → "
        f"{report['kernel_ms']['pruned']:.2f} ms ({report['kernel_speedup']:.2f}×; "
        f"predicted {report['predicted_speedup']:.2f}×)"
    )
    agree = report["top1_agreement"]
    print(
        f"top-1 agreement: {agree['new_views']:.1%} on new views of the training photos, "
        f"{agree['unseen_photos']:.1%} on held-out photos"
    )
    sure = report["top1_agreement_confident"]
    print(
        "where the original's top-1 probability is >= 0.5 "
        f"({sure['new_views']['share']:.0%} / {sure['unseen_photos']['share']:.0%} of the views): "
        f"{sure['new_views']['agreement']:.1%} / {sure['unseen_photos']['agreement']:.1%}"
    )
    ceiling = report["teacher_top1_stability"]
    print(
        f"the original's own top-1 stability across views: {ceiling['new_views']:.1%} / "
        f"{ceiling['unseen_photos']:.1%}"
    )
    print(f"trained {report['training']['seconds']:.0f} s")
    for note in report["notes"]:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
