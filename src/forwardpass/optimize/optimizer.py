"""One optimization run: build every candidate, measure it, choose, write the new version.

::

    read model + version ─▶ plan target ─▶ load data ─▶ original's outputs (reference)
         ─▶ for each method × variant: check ─▶ build ─▶ load ─▶ accuracy ─▶ latency/memory
         ─▶ select (never over budget) ─▶ write version + report atomically (or keep original)

A method that cannot handle the model (missing ops, no calibration data, missing package) is
recorded as skipped or failed with its reason, and the others go on. Candidates are built in a
temporary folder; only the chosen one is copied into the repository, by :func:`write_version`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.model_config import ModelConfig
from forwardpass.optimize.accuracy import Task, detect_task, evaluate
from forwardpass.optimize.candidates import (
    ORIGINAL,
    CandidateResult,
    count_parameters,
    io_mismatch,
    model_size,
)
from forwardpass.optimize.data import (
    Samples,
    find_request_log,
    load_labels,
    load_samples,
    synthesize,
)
from forwardpass.optimize.generation import GenerationEval, optimize_generation
from forwardpass.optimize.measure import MeasureSettings, measure_all, open_session
from forwardpass.optimize.methods import BuildContext, MethodSkipped, resolve_methods
from forwardpass.optimize.openvino_model import write_openvino_model
from forwardpass.optimize.report import Report, report_files, save_report
from forwardpass.optimize.selection import select
from forwardpass.optimize.target import Target, plan_target
from forwardpass.optimize.version import next_version, write_version

__all__ = ["OptimizeOptions", "OptimizeResult", "ProgressCallback", "optimize"]

log = logging.getLogger("forwardpass.optimize")

#: ``(steps done, steps in all, what is happening)``.
ProgressCallback = Callable[[int, int, str], None]
_RANDOM_SAMPLES = 64
_EVAL_BATCH = 64


@dataclass(frozen=True, slots=True)
class OptimizeOptions:
    """What to optimize, for which target, within which accuracy budget."""

    model: str
    repository: Path
    version: int | None = None
    target: Target = Target.CPU
    max_accuracy_drop: float = 0.01
    calibration: Path | None = None
    validation: Path | None = None
    labels: Path | None = None
    methods: tuple[str, ...] | None = None
    dry_run: bool = False
    task: Task | None = None
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    min_gain: float = 0.05
    max_samples: int = 2000
    calibration_samples: int = 256
    #: Training steps for the methods that train (distill); ``None``: the method's default.
    steps: int | None = None
    #: Where to save the report when no version is written (original kept, or a dry run).
    report_dir: Path | None = None
    #: How a generation model's candidates are exercised (``optimize.generation``).
    generation: GenerationEval = field(default_factory=GenerationEval)


@dataclass(frozen=True, slots=True)
class OptimizeResult:
    report: Report
    #: The new version's folder, or None when none was written.
    version_dir: Path | None
    report_paths: tuple[Path, ...] = ()


@dataclass(slots=True)
class _Data:
    evaluation: Samples
    calibration: Samples | None
    description: dict[str, object]


def _source(
    options: OptimizeOptions,
) -> tuple[ModelConfig, Path, int, Path, dict[str, tuple[str, ...]]]:
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(options.repository).read(options.model)
    config = entry.config
    if config.backend != "onnxruntime":
        raise InvalidArgument(
            f"model {options.model!r} uses backend {config.backend!r}; only ONNX models "
            "(backend onnxruntime) can be optimized"
        )
    version = options.version or entry.versions[-1]
    model_file = entry.path / str(version) / config.default_model_filename
    if not model_file.is_file():
        raise NotFound(f"model {options.model!r} has no version {version} ({model_file})")
    return config, entry.path, version, model_file, dict(entry.labels)


def _load_data(
    options: OptimizeOptions,
    config: ModelConfig,
    model_dir: Path,
    labels: dict[str, tuple[str, ...]],
) -> _Data:
    if options.validation is not None:
        evaluation = load_samples(
            options.validation,
            config,
            model_dir=model_dir,
            labels=labels,
            limit=options.max_samples,
        )
        if options.labels is not None:
            evaluation = evaluation.with_labels(load_labels(options.labels))
    else:
        if options.labels is not None:
            raise InvalidArgument("--labels describes the --validation samples; give both")
        evaluation = synthesize(config, _RANDOM_SAMPLES)
    calibration: Samples | None = None
    log_folder = find_request_log(model_dir)
    if options.calibration is not None:
        calibration = load_samples(
            options.calibration,
            config,
            model_dir=model_dir,
            labels=labels,
            limit=options.calibration_samples,
        )
        calibration_from = f"calibration data {options.calibration}"
    elif log_folder is not None:
        calibration = load_samples(log_folder, config, limit=options.calibration_samples)
        calibration_from = f"request log {log_folder}"
    elif evaluation.real and len(evaluation) >= 8:
        # Calibrate and evaluate on disjoint samples, so static quantization is not judged on
        # the very inputs that set its ranges.
        order = np.random.default_rng(0).permutation(len(evaluation))
        count = min(options.calibration_samples, len(evaluation) // 4)
        calibration = evaluation.take(np.sort(order[:count]), f"{evaluation.source} (held out)")
        evaluation = evaluation.take(np.sort(order[count:]))
        calibration_from = f"{count} samples held out of the validation set (not evaluated on)"
    else:
        calibration_from = "none (static quantization is skipped)"
    description = {
        "evaluation": evaluation.source,
        "evaluation_samples": len(evaluation),
        "real_inputs": evaluation.real,
        "labels": evaluation.labels is not None,
        "calibration": calibration_from,
        "calibration_samples": 0 if calibration is None else len(calibration),
    }
    if not evaluation.real:
        description["note"] = "no accuracy data: agreement on random inputs (latency only)"
    return _Data(evaluation, calibration, description)


def _outputs(
    path: Path,
    samples: Samples,
    providers: tuple[str, ...],
    config: ModelConfig,
    threads: int,
) -> tuple[dict[str, np.ndarray], str | None]:
    """The candidate's outputs on the evaluation samples, and the precision it computed in
    where the runtime reports one (OpenVINO)."""
    session = open_session(path, providers, threads)
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    if config.batching:
        feeds = list(samples.batches(min(_EVAL_BATCH, config.max_batch_size)))
    else:
        feeds = [{k: v[i] for k, v in samples.arrays.items()} for i in range(len(samples))]
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            parts[name].append(value if config.batching else value[None])
    precision = getattr(session, "precision", None)
    return {n: np.concatenate(v) for n, v in parts.items()}, precision


def _versions(results: list[CandidateResult]) -> dict[str, str]:
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if any(p.startswith("openvino:") for r in results for p in r.providers):
        import openvino

        versions["openvino"] = openvino.get_version()
    return versions


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def optimize(options: OptimizeOptions, progress: ProgressCallback | None = None) -> OptimizeResult:
    """Run the whole optimization (see the module docstring)."""
    from forwardpass.generation.settings import GenerationSettings

    config, model_dir, version, source, labels = _source(options)
    generation = GenerationSettings.from_config(config)
    if generation is not None:  # judged on what it generates, through the decoder loop
        return optimize_generation(
            options, config, generation, model_dir, version, source, progress
        )
    plan = plan_target(options.target)
    methods = resolve_methods(options.methods, options.target)
    data = _load_data(options, config, model_dir, labels)
    primary = config.outputs[0].name
    settings = options.measure
    max_batch = config.max_batch_size if config.batching else 1

    with tempfile.TemporaryDirectory(prefix="forwardpass-optimize-") as tmp:
        workdir = Path(tmp)
        ctx = BuildContext(
            source, config, options.target, data.calibration, workdir, steps=options.steps
        )
        plans: list[tuple[CandidateResult, Callable[[Path], list[str]] | None]] = [
            (
                CandidateResult(
                    ORIGINAL,
                    ORIGINAL,
                    f"version {version} as it is",
                    path=source,
                    providers=plan.original,
                ),
                None,
            )
        ]
        filenames: dict[str, str] = {}
        for method in methods:
            reason = method.check(ctx)
            if reason:
                plans.append(
                    (CandidateResult(method.name, method.name, "", "skipped", reason), None)
                )
                continue
            for variant in method.variants(ctx):
                builder = functools.partial(method.build, ctx, variant)
                filenames[variant.name] = method.filename
                runs_on = method.providers(ctx, variant) or plan.providers
                plans.append(
                    (
                        CandidateResult(
                            variant.name, method.name, variant.description, providers=runs_on
                        ),
                        builder,
                    )
                )
        total = len(plans)
        say = progress or (lambda done, all_, what: None)
        reference: dict[str, np.ndarray] = {}
        task: Task = "classification"
        results: list[CandidateResult] = []
        for i, (result, build) in enumerate(plans):
            results.append(result)
            if result.status == "skipped":
                say(i + 1, total, f"{result.name}: skipped")
                continue
            try:
                if build is not None:
                    say(i, total, f"building {result.name}")
                    folder = workdir / result.name
                    folder.mkdir()
                    result.path = folder / filenames.get(result.name, "model.onnx")
                    # onnxruntime.quantization drops temporary files (external weight data,
                    # shape-inference models) into the current directory: keep them in the
                    # candidate's folder, which is deleted with the run.
                    with contextlib.chdir(folder):
                        result.notes.extend(build(result.path))
                    mismatch = io_mismatch(source, result.path)
                    if mismatch:
                        raise MethodSkipped(mismatch)
                assert result.path is not None
                say(i, total, f"accuracy of {result.name}")
                outputs, precision = _outputs(
                    result.path, data.evaluation, result.providers, config, settings.threads
                )
                if precision is not None:
                    result.notes.append(f"OpenVINO compiled it to compute in {precision}")
                if build is None:
                    reference = outputs
                    has_labels_file = bool(config.outputs[0].label_filename)
                    task = options.task or detect_task(
                        outputs[primary], primary, data.evaluation.labels, has_labels_file
                    )
                result.accuracy = evaluate(
                    reference,
                    outputs,
                    primary=primary,
                    task=task,
                    labels=data.evaluation.labels,
                    real_inputs=data.evaluation.real,
                )
                result.size_bytes = model_size(result.path)
                result.parameters = count_parameters(result.path)
            except MethodSkipped as exc:
                result.status, result.reason = "skipped", str(exc)
            except Exception as exc:  # one method's failure must not stop the others
                if build is None:
                    raise  # the original itself does not run: nothing to compare with
                log.debug("candidate %s failed", result.name, exc_info=True)
                result.status, result.reason = "failed", _first_line(exc)
            say(i + 1, total, f"{result.name}: {result.status}")

        # Timed last, all together and interleaved, so a drift of the machine touches every
        # candidate alike (see measure.py).
        timed = {r.name: r for r in results if r.status == "measured" and r.path is not None}
        performances = measure_all(
            {name: r.path for name, r in timed.items() if r.path is not None},
            data.evaluation.arrays,
            plan.providers,
            settings,
            batching=config.batching,
            max_batch=max_batch,
            progress=say,
            providers_for={name: r.providers for name, r in timed.items()},
        )
        for name, performance in performances.items():
            if isinstance(performance, Exception):
                if timed[name].method == ORIGINAL:
                    raise performance
                timed[name].status, timed[name].reason = "failed", _first_line(performance)
            else:
                timed[name].performance = performance

        return conclude(
            options,
            version,
            results,
            model_dir,
            config,
            providers={
                "available": list(plan.available),
                "measured_on": list(plan.providers),
                "original_measured_on": list(plan.original),
            },
            data=data.description,
            measurement={**asdict(settings), "task": task, "primary_output": primary},
        )


def conclude(
    options: OptimizeOptions,
    version: int,
    results: list[CandidateResult],
    model_dir: Path,
    config: ModelConfig,
    *,
    providers: dict[str, list[str]],
    data: dict[str, Any],
    measurement: dict[str, Any],
) -> OptimizeResult:
    """Choose among the measured ``results`` under the options' budget, write the report, and
    promote the choice (unless a dry run): the end of every optimizer run. Called while the
    candidates' work folder still exists, since promotion copies the chosen file out of it."""
    selection = select(
        results,
        max_accuracy_drop=options.max_accuracy_drop,
        target=options.target,
        min_gain=options.min_gain,
    )
    report = Report(
        model=options.model,
        optimized_from=version,
        target=options.target.value,
        max_accuracy_drop=options.max_accuracy_drop,
        providers=providers,
        data=data,
        measurement=measurement,
        candidates=results,
        selection=selection,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        versions=_versions(results),
    )
    if selection.promoted and not options.dry_run:
        return promote(report, results, model_dir, config)
    paths = tuple(save_report(report, options.report_dir)) if options.report_dir else ()
    return OptimizeResult(report, None, paths)


def promote(
    report: Report, results: list[CandidateResult], model_dir: Path, config: ModelConfig
) -> OptimizeResult:
    """Write the chosen candidate (still in its work folder) as the model's next version, or
    as the OpenVINO model beside it, with the report files inside."""
    chosen = next(c for c in results if c.name == report.selection.chosen)
    assert chosen.path is not None and chosen.within_budget
    if chosen.path.suffix == ".xml":
        written = write_openvino_model(model_dir, config, chosen, report, report_files)
    else:
        report.version = number = next_version(model_dir)
        written = write_version(
            model_dir,
            number,
            chosen.path,
            report_files(report),
            model_filename=config.default_model_filename,
        )
    reports = tuple(sorted(p for p in written.iterdir() if p.name.startswith("optimization")))
    return OptimizeResult(report, written, reports)
