"""A shallower all-MiniLM-L6-v2: latency and agreement of a distilled student, FP32 and INT8.

Usage::

    python bench/distill_bench.py [--model-repository DIR] [--steps 400] [--layers 0,2,4]
                                  [--intermediate N [--select lsq] [--refit]]
                                  [--hidden-weight 0] [--lr 1e-4]
                                  [--student FILE | --init-student FILE] [--save-student FILE]
                                  [--rounds 3] [--iterations 200] [--json]

It builds the zoo model ``all-minilm-l6-v2`` (or takes it from ``--model-repository``),
distils a student that starts from the teacher's ``--layers`` (default: half of them, the
subset closest to the teacher before training), optionally with a narrower feed-forward
(``--intermediate``; ``--select lsq --refit``: the neurons and output projections fitted on
calibration sentences, :mod:`forwardpass.optimize.encoder_width`), on
sentences from the installed packages' docstrings and texts
(:func:`forwardpass.optimize.encoder_distill.distill_encoder`; ``--steps`` bounds training),
or takes an already trained ``--student`` file, then quantizes teacher and student with
dynamic INT8 and reports, on this CPU:

- latency at batch 1 and batch 8 (held-out sentences, one padded batch), one intra-op
  thread, ONNX Runtime, every model timed in interleaved rounds (``measure_all``);
- cosine to the teacher on held-out sentences (mean, 5th percentile, min) and
  nearest-neighbour retrieval agreement with the teacher (top-1, top-5 overlap).

The held-out sentences come from documents never trained on. Run briefly with small numbers
to check it works (``--steps 5 --iterations 20``); measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

MODEL = "all-minilm-l6-v2"


def _repository(given: Path | None, tmp: Path) -> Path:
    if given is not None and (given / MODEL).is_dir():
        return given
    from forwardpass.zoo.registry import add

    repo = given or tmp / "repo"
    add(MODEL, repo)
    return repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--layers", default=None, help="teacher layers, e.g. 0,2,4")
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument(
        "--select",
        choices=("weight", "activation", "lsq"),
        default="weight",
        help="how the kept FFN neurons are chosen (with --intermediate)",
    )
    parser.add_argument(
        "--refit", action="store_true", help="solve the narrowed FFN outputs before training"
    )
    parser.add_argument("--refit-target", choices=("own", "teacher"), default="own")
    parser.add_argument("--calibration-sentences", type=int, default=2000)
    parser.add_argument("--hidden-weight", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=20000)
    parser.add_argument("--test-sentences", type=int, default=1000)
    parser.add_argument("--student", type=Path, default=None, help="a trained student file")
    parser.add_argument(
        "--init-student",
        type=Path,
        default=None,
        help="train on from this student file (e.g. an earlier --save-student)",
    )
    parser.add_argument("--save-student", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import shutil

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from forwardpass.optimize.corpus import sentences
    from forwardpass.optimize.encoder_distill import (
        EncoderDistillSettings,
        agreement,
        distill_encoder,
        embed,
        tokenize,
    )
    from forwardpass.optimize.measure import MeasureSettings, measure_all
    from forwardpass.repository import ModelRepository

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp_name:
        tmp = Path(tmp_name)
        entry = ModelRepository(_repository(args.model_repository, tmp)).read(MODEL)
        teacher = entry.path / str(entry.versions[-1]) / entry.config.default_model_filename
        corpus = sentences(args.sentences)
        settings = EncoderDistillSettings(
            layers=tuple(int(x) for x in args.layers.split(",")) if args.layers else None,
            intermediate=args.intermediate,
            select=args.select,
            refit=args.refit,
            refit_target=args.refit_target,
            calibration_sentences=args.calibration_sentences,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            hidden_weight=args.hidden_weight,
            test_sentences=args.test_sentences,
        )
        training: dict[str, Any] = {"corpus": corpus.source}
        if args.student is not None:
            student = args.student
            training["student"] = f"given: {student}"
        else:
            student = tmp / "student.onnx"
            result = distill_encoder(
                teacher,
                entry.config,
                entry.path,
                student,
                settings,
                corpus.train,
                corpus.test,
                corpus.source,
                initial=args.init_student,
            )
            training.update(
                student=result.student,
                steps=len(result.losses),
                seconds=round(result.seconds, 1),
                notes=result.notes(),
            )
            if args.save_student is not None:
                shutil.copyfile(student, args.save_student)
        files = {"teacher": teacher, "student": student}
        for name in ("teacher", "student"):
            quantize_dynamic(
                str(files[name]), str(tmp / f"{name}-int8.onnx"), weight_type=QuantType.QInt8
            )
            files[f"{name}-int8"] = tmp / f"{name}-int8.onnx"
        tok = tokenize(entry.config, entry.path)
        held = list(corpus.test)[: args.test_sentences]
        batches = [tok(sorted(held, key=len)[i : i + 32]) for i in range(0, len(held), 32)]
        reference = embed(teacher, batches)
        quality = {
            name: agreement(reference, embed(path, batches)).to_dict()
            for name, path in files.items()
            if name != "teacher"
        }
        timing_inputs = tok(held[:64])  # one padded batch of held-out sentences
        performances = measure_all(
            files,
            timing_inputs,
            ["CPUExecutionProvider"],
            MeasureSettings(
                threads=1,
                iterations=args.iterations,
                max_seconds=max(1.0, args.iterations / 50),
                batch_sizes=(1, 8),
                rounds=args.rounds,
                isolate=False,
            ),
            batching=True,
            max_batch=8,
        )
    rows: dict[str, Any] = {}
    base = performances["teacher"]
    for name in files:
        perf = performances[name]
        if isinstance(perf, Exception):
            rows[name] = {"error": str(perf)}
            continue
        b1, b8 = perf.by_batch["1"]["p50_ms"], perf.by_batch["8"]["p50_ms"]
        assert not isinstance(base, Exception)
        rows[name] = {
            "b1_ms": b1,
            "b8_ms": b8,
            "speedup_b1": base.by_batch["1"]["p50_ms"] / b1,
            "speedup_b8": base.by_batch["8"]["p50_ms"] / b8,
            "size_mb": files[name].stat().st_size / 1e6 if files[name].exists() else None,
            **quality.get(name, {}),
        }
    out = {
        "training": training,
        "timing": {"sequence_length": int(timing_inputs["input_ids"].shape[1])},
        "models": rows,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"corpus: {corpus.source}")
    for note in training.get("notes", [training.get("student", "")]):
        print(note)
    print(f"timed at sequence length {out['timing']['sequence_length']}, one intra-op thread")
    print(
        f"{'model':14} {'b1 ms':>8} {'×':>5} {'b8 ms':>8} {'×':>5} {'cos mean':>9} "
        f"{'cos p5':>7} {'cos min':>7} {'NN@1':>6} {'NN@5':>6}"
    )
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:14} failed: {row['error']}")
            continue
        q = (
            f"{row['cosine_mean']:9.4f} {row['cosine_p5']:7.4f} {row['cosine_min']:7.4f} "
            f"{row['top1']:6.3f} {row['top5']:6.3f}"
            if "cosine_mean" in row
            else f"{'(reference)':>9}"
        )
        print(
            f"{name:14} {row['b1_ms']:8.2f} {row['speedup_b1']:5.2f} {row['b8_ms']:8.2f} "
            f"{row['speedup_b8']:5.2f} {q}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
