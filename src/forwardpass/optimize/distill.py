"""Knowledge distillation: a smaller network trained on a teacher's outputs (extra ``torch``).

``forwardpass distill TEACHER --student SPEC --data UNLABELLED`` reads the teacher (any ONNX
model ONNX Runtime runs, one input and one output with a batch axis), runs it over the
unlabelled data once, trains the student described by SPEC on its temperature-softened outputs
(:mod:`.training`), exports the student with the teacher's input and output names (a final
Softmax/LogSoftmax when the teacher has one), checks the export against torch, measures both
(:mod:`.accuracy`, :mod:`.measure`) and writes the student as a new version beside the teacher
with ``optimization.json``/``.html`` (``method: distillation``, ``optimized_from``) in the
report format of ``forwardpass optimize``. The version is written all or nothing by
:func:`~.version.write_version` (the importers' staging-and-rename, plus the report files in the
same rename), never over an existing one, and only when the accuracy drop is within budget.

Student SPEC (:func:`parse_student`):

- ``mlp:128,64``: dense hidden layers with ReLU on the flattened input;
- ``cnn:8,16/64``: 3×3 convolutions (padding 1, ReLU) with 8 and 16 channels, then dense
  hidden layers of 64; each convolution is followed by a 2×2 max-pool while the feature map is
  at least 4 pixels a side, unless the conv part says where: ``p`` a 2×2 max-pool, ``g`` a
  global average pool (``cnn:8,16,p/32``, ``cnn:16,p,32,g/``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.errors import InternalError, InvalidArgument, NotFound, Unsupported
from forwardpass.optimize.measure import MeasureSettings
from forwardpass.optimize.training import FitSettings

if TYPE_CHECKING:
    from torch import nn

    from forwardpass.optimize.report import Report

__all__ = ["DistillOptions", "DistillResult", "StudentSpec", "distill", "parse_student"]

log = logging.getLogger("forwardpass.optimize")
METHOD = "distillation"
_HOLD_OUT = 0.1


@dataclass(frozen=True, slots=True)
class StudentSpec:
    """A student architecture: ``mlp`` or ``cnn``, its conv stack and its dense layers."""

    text: str
    kind: str
    convs: tuple[int | str, ...] = ()
    dense: tuple[int, ...] = ()


def parse_student(text: str) -> StudentSpec:
    """Parse ``mlp:128,64`` or ``cnn:8,16,p/64`` (see the module docstring)."""
    kind, _, rest = text.strip().partition(":")

    def numbers(part: str, markers: tuple[str, ...] = ()) -> tuple[Any, ...]:
        items = [x.strip() for x in part.split(",") if x.strip()]
        try:
            return tuple(x if x in markers else int(x) for x in items)
        except ValueError:
            raise InvalidArgument(
                f"student {text!r}: expected comma-separated sizes"
                + (f" or {'/'.join(markers)}" if markers else "")
                + ", e.g. mlp:128,64 or cnn:8,16,p/64"
            ) from None

    if kind == "mlp":
        dense = numbers(rest)
        convs: tuple[Any, ...] = ()
    elif kind == "cnn":
        conv_part, _, dense_part = rest.partition("/")
        convs, dense = numbers(conv_part, ("p", "g")), numbers(dense_part)
        if not any(isinstance(c, int) for c in convs):
            raise InvalidArgument(f"student {text!r}: a cnn needs at least one convolution")
    else:
        raise InvalidArgument(
            f"student {text!r}: the family is mlp or cnn (mlp:128,64, cnn:8,16/64)"
        )
    if any(isinstance(n, int) and n < 1 for n in (*convs, *dense)):
        raise InvalidArgument(f"student {text!r}: sizes must be positive")
    return StudentSpec(text.strip(), kind, convs, dense)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Unsupported("distillation needs torch: pip install 'forwardpass[torch]'") from exc
    return torch


def build_student(spec: StudentSpec, sample_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """An ``nn.Sequential`` from samples of ``sample_shape`` to ``outputs`` logits."""
    torch = _torch()
    from torch import nn

    layers: list[nn.Module] = []
    if spec.kind == "cnn":
        if len(sample_shape) != 3:
            raise InvalidArgument(
                f"student {spec.text!r}: a cnn takes [channels, height, width] samples, the "
                f"teacher's input is {list(sample_shape)}; use an mlp"
            )
        channels, height, width = sample_shape
        auto_pool = not any(c in ("p", "g") for c in spec.convs)
        for item in spec.convs:
            if item == "g":
                layers.append(nn.AdaptiveAvgPool2d(1))
                height = width = 1
            elif item == "p":
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
                if auto_pool and min(height, width) >= 4:
                    layers.append(nn.MaxPool2d(2))
                    height, width = height // 2, width // 2
        if min(height, width) < 1:
            raise InvalidArgument(f"student {spec.text!r} pools the {sample_shape} input away")
        features = channels * height * width
    else:
        features = int(np.prod(sample_shape))
    layers.append(nn.Flatten())
    for width_ in spec.dense:
        layers += [nn.Linear(features, width_), nn.ReLU()]
        features = width_
    layers.append(nn.Linear(features, outputs))
    return torch.nn.Sequential(*layers)


def _with_head(student: nn.Module, kind: str) -> nn.Module:
    """``student`` ending in the teacher's Softmax/LogSoftmax, for export."""
    import torch
    from torch import nn

    class Exported(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            if kind == "probabilities":
                return torch.softmax(out, dim=-1)
            if kind == "log_probabilities":
                return torch.log_softmax(out, dim=-1)
            return out

    return Exported(student).eval()


@dataclass(frozen=True, slots=True)
class DistillOptions:
    """Which teacher, which student, which data, how long to train, what drop is acceptable."""

    teacher: str
    repository: Path
    student: str
    data: Path
    validation: Path | None = None
    labels: Path | None = None
    version: int | None = None
    fit: FitSettings = field(
        default_factory=lambda: FitSettings(epochs=60, max_steps=10**9, learning_rate=1e-2)
    )
    #: The student is written only when its accuracy drop is at most this.
    max_accuracy_drop: float = 0.02
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    max_samples: int = 20000
    dry_run: bool = False
    report_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class DistillResult:
    report: Report
    version_dir: Path | None
    report_paths: tuple[Path, ...] = ()


def _teacher(options: DistillOptions) -> tuple[Any, Path, int, Path, dict[str, tuple[str, ...]]]:
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(options.repository).read(options.teacher)
    config = entry.config
    if config.backend != "onnxruntime":
        raise Unsupported(f"teacher {options.teacher!r} is not an ONNX model ({config.backend})")
    if len(config.inputs) != 1 or len(config.outputs) != 1 or not config.batching:
        raise Unsupported(
            "distillation takes a teacher with one input and one output and a batch axis; "
            f"{options.teacher!r} has inputs {[s.name for s in config.inputs]}, outputs "
            f"{[s.name for s in config.outputs]}, max_batch_size {config.max_batch_size}"
        )
    if len(config.outputs[0].dims) != 1:
        raise Unsupported(
            f"the teacher's output is {list(config.outputs[0].dims)} per sample; "
            "distillation trains students with one vector output"
        )
    version = options.version or entry.versions[-1]
    source = entry.path / str(version) / config.default_model_filename
    if not source.is_file():
        raise NotFound(f"model {options.teacher!r} has no version {version} ({source})")
    return config, entry.path, version, source, dict(entry.labels)


def distill(options: DistillOptions) -> DistillResult:
    """Train, export, verify, measure and (within budget) write the student as a new version."""
    torch = _torch()
    import onnx
    import onnxruntime

    from forwardpass.optimize.accuracy import detect_task, evaluate
    from forwardpass.optimize.candidates import (
        ORIGINAL,
        CandidateResult,
        count_parameters,
        io_mismatch,
    )
    from forwardpass.optimize.data import load_labels, load_samples
    from forwardpass.optimize.feedforward import count_flops
    from forwardpass.optimize.measure import measure_all
    from forwardpass.optimize.pruning import run_onnx
    from forwardpass.optimize.report import Report, report_files, save_report
    from forwardpass.optimize.selection import Selection
    from forwardpass.optimize.torch_graph import export
    from forwardpass.optimize.training import fit, output_kind, teacher_targets
    from forwardpass.optimize.version import next_version, write_version

    spec = parse_student(options.student)
    config, model_dir, version, source, labels = _teacher(options)
    in_name, out_name = config.inputs[0].name, config.outputs[0].name
    kw: dict[str, Any] = {"model_dir": model_dir, "labels": labels, "limit": options.max_samples}
    train = load_samples(options.data, config, **kw)
    if options.validation is not None:
        held = load_samples(options.validation, config, **kw)
        if options.labels is not None:
            held = held.with_labels(load_labels(options.labels))
    elif options.labels is not None:
        raise InvalidArgument("--labels describes the --validation samples; give both")
    else:
        order = np.random.default_rng(options.fit.seed).permutation(len(train))
        count = max(1, int(len(train) * _HOLD_OUT))
        held = train.take(
            np.sort(order[:count]), f"{train.source} ({count} held out, not trained on)"
        )
        train = train.take(np.sort(order[count:]))
    x = np.ascontiguousarray(train.arrays[in_name], dtype=np.float32)
    xv = np.ascontiguousarray(held.arrays[in_name], dtype=np.float32)
    teacher_model = onnx.load(str(source))
    teacher_out = run_onnx(source, x)
    has_labels_file = bool(config.outputs[0].label_filename)
    task = detect_task(teacher_out, out_name, held.labels, has_labels_file)
    kind = output_kind(teacher_model, out_name, task == "classification")
    torch.manual_seed(options.fit.seed)
    student = build_student(spec, tuple(x.shape[1:]), int(teacher_out.shape[1]))
    losses = fit(student, [x], teacher_targets(teacher_out, kind), kind, options.fit)
    exported = _with_head(student, kind)

    with tempfile.TemporaryDirectory(prefix="forwardpass-distill-") as tmp:
        path = Path(tmp) / "model.onnx"
        export(exported, path, [x[:2]], [in_name], [out_name])
        with torch.no_grad():
            diff = float(
                np.max(
                    np.abs(exported(torch.from_numpy(xv[:64])).numpy() - run_onnx(path, xv[:64]))
                )
            )
        if not diff <= 1e-4:
            raise InternalError(f"the student's ONNX export differs from torch by {diff:.2e}")
        mismatch = io_mismatch(source, path)
        if mismatch:
            raise InternalError(f"the student cannot be a version of {options.teacher}: {mismatch}")
        reference = {out_name: run_onnx(source, xv)}
        answers = {out_name: run_onnx(path, xv)}
        settings = options.measure
        results = []
        for name, method, what, file, outputs in (
            (ORIGINAL, ORIGINAL, f"version {version} (the teacher)", source, reference),
            (
                f"distill-{spec.text}",
                METHOD,
                f"student {spec.text}, {kind}, T={options.fit.temperature}",
                path,
                answers,
            ),
        ):
            result = CandidateResult(name, method, what, path=file)
            result.accuracy = evaluate(
                reference, outputs, primary=out_name, task=task, labels=held.labels
            )
            result.size_bytes = file.stat().st_size
            result.parameters = count_parameters(file)
            results.append(result)
        # Teacher and student timed in interleaved rounds (see measure.py).
        performances = measure_all(
            {r.name: r.path for r in results if r.path is not None},
            {in_name: xv},
            ["CPUExecutionProvider"],
            settings,
            batching=True,
            max_batch=config.max_batch_size,
        )
        for result in results:
            performance = performances[result.name]
            if isinstance(performance, Exception):
                raise performance
            result.performance = performance
        teacher, pupil = results
        assert pupil.accuracy is not None and teacher.parameters and pupil.parameters
        flops = (count_flops(teacher_model).flops, count_flops(onnx.load(str(path))).flops)
        ratios = {
            "parameters": teacher.parameters / pupil.parameters,
            "bytes": (teacher.size_bytes or 0) / max(pupil.size_bytes or 1, 1),
            "flops": flops[0] / max(flops[1], 1),
        }
        pupil.notes += [
            f"{ratios['parameters']:.1f}× fewer parameters, {ratios['bytes']:.1f}× smaller file, "
            f"FLOPs/sample {flops[0]:,} → {flops[1]:,}",
            f"trained {len(losses)} epochs on {len(x)} unlabelled samples; "
            f"loss {losses[0]:.4f} → {losses[-1]:.4f}",
        ]
        teacher.within_budget = True
        pupil.within_budget = pupil.accuracy.drop <= options.max_accuracy_drop
        rule = (
            f"distillation: the student is written when its accuracy drop is at most "
            f"{options.max_accuracy_drop}"
        )
        drop = (
            f"{pupil.accuracy.metric} {pupil.accuracy.value:.4f}, drop {pupil.accuracy.drop:+.4f}"
        )
        selection = (
            Selection(pupil.name, True, rule, f"{pupil.name}: {drop}; {pupil.notes[0]}")
            if pupil.within_budget
            else Selection(
                ORIGINAL,
                False,
                rule,
                f"kept the teacher: {pupil.name} is over the "
                f"budget ({drop} > {options.max_accuracy_drop})",
            )
        )
        report = Report(
            model=options.teacher,
            optimized_from=version,
            target="cpu",
            max_accuracy_drop=options.max_accuracy_drop,
            providers={
                "available": onnxruntime.get_available_providers(),
                "measured_on": ["CPUExecutionProvider"],
            },
            data={
                "training": train.source,
                "training_samples": len(train),
                "evaluation": held.source,
                "evaluation_samples": len(held),
                "real_inputs": True,
                "labels": held.labels is not None,
            },
            measurement={
                **asdict(settings),
                "task": task,
                "primary_output": out_name,
                METHOD: {
                    "student": spec.text,
                    "output_kind": kind,
                    **asdict(options.fit),
                    "epochs_run": len(losses),
                    "loss_first": losses[0],
                    "loss_last": losses[-1],
                    "flops_teacher": flops[0],
                    "flops_student": flops[1],
                    "ratios": ratios,
                    "onnx_vs_torch_max_abs_diff": diff,
                },
            },
            candidates=results,
            selection=selection,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            versions={"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        )
        if selection.promoted and not options.dry_run:
            report.version = next_version(model_dir)
            written = write_version(
                model_dir,
                report.version,
                path,
                report_files(report),
                model_filename=config.default_model_filename,
            )
            log.info("wrote %s version %s", options.teacher, report.version)
            return DistillResult(report, written, tuple(sorted(written.iterdir())))
    paths = tuple(save_report(report, options.report_dir)) if options.report_dir else ()
    return DistillResult(report, None, paths)
