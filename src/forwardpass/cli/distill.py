"""``forwardpass distill``: a smaller student trained on a teacher's outputs, as a new version."""

from __future__ import annotations

import json
from pathlib import Path

import click

from forwardpass.cli.options import (
    DataclassOption,
    given,
    require_model,
    run_options,
    writable_repository,
)

__all__ = ["distill"]


_OPTIONS = "forwardpass.optimize.distill:DistillOptions"


@click.command()
@click.argument("teacher")
@run_options(_OPTIONS, "TEACHER")
@click.option(
    "--student",
    required=True,
    help="Student architecture: mlp:H1,H2,... (dense ReLU layers on the flattened input) or "
    "cnn:C1,C2,.../D1,... (3x3 conv+ReLU channels, then dense layers; a 2x2 max-pool follows "
    "each conv while the map is >= 4 px, unless the conv part places 'p' (2x2 max-pool) or "
    "'g' (global average pool) itself). Examples: mlp:128,64  cnn:8,16/64  cnn:4,8,p/16.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="Unlabelled training inputs: .npz (keyed by input name), .npy, or a folder of them / "
    "images (fed through the teacher's declared processing). Without --validation, 10% is "
    "held out to judge the student.",
)
@click.option(
    "--epochs",
    cls=DataclassOption,
    default_from=f"{_OPTIONS}.fit.epochs",
    type=click.IntRange(min=1),
    help="Training epochs.",
)
@click.option(
    "--temperature",
    cls=DataclassOption,
    default_from=f"{_OPTIONS}.fit.temperature",
    type=click.FloatRange(min=0, min_open=True),
    help="Softening temperature T.",
)
@click.option(
    "--learning-rate",
    cls=DataclassOption,
    default_from=f"{_OPTIONS}.fit.learning_rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Adam's rate.",
)
@click.option(
    "--batch-size",
    cls=DataclassOption,
    default_from=f"{_OPTIONS}.fit.batch_size",
    type=click.IntRange(min=1),
    help="Training batch.",
)
@click.option(
    "--seed",
    cls=DataclassOption,
    default_from=f"{_OPTIONS}.fit.seed",
    type=int,
    help="Seed of init and order.",
)
def distill(
    teacher: str,
    model_repository: Path | None,
    version: int | None,
    validation: Path | None,
    labels: Path | None,
    max_accuracy_drop: float | None,
    iterations: int | None,
    seconds: float | None,
    rounds: int | None,
    no_isolate: bool,
    dry_run: bool,
    report_dir: Path | None,
    as_json: bool,
    student: str,
    data: Path,
    epochs: int | None,
    temperature: float | None,
    learning_rate: float | None,
    batch_size: int | None,
    seed: int | None,
) -> None:
    """Train a smaller STUDENT on TEACHER's temperature-softened outputs over unlabelled data.

    Needs torch: pip install 'forwardpass[torch]'. The student is exported to ONNX with the
    teacher's input and output names, checked against torch, measured against the teacher,
    and written as a new version with optimization.json/.html (method: distillation) beside
    it; no existing version is touched.
    """
    from dataclasses import replace

    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import say, show
    from forwardpass.errors import ForwardpassError
    from forwardpass.optimize.distill import DistillOptions
    from forwardpass.optimize.distill import distill as run
    from forwardpass.optimize.measure import MeasureSettings
    from forwardpass.optimize.report import report_table

    repository = writable_repository(model_repository)
    require_model(repository, teacher)
    defaults = DistillOptions(teacher=teacher, repository=repository, student=student, data=data)
    options = replace(
        defaults,
        fit=replace(
            defaults.fit,
            **given(
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                temperature=temperature,
                seed=seed,
            ),
        ),
        measure=replace(
            MeasureSettings(),
            isolate=not no_isolate,
            **given(iterations=iterations, max_seconds=seconds, rounds=rounds),
        ),
        dry_run=dry_run,
        **given(
            validation=validation,
            labels=labels,
            version=version,
            max_accuracy_drop=max_accuracy_drop,
            report_dir=report_dir,
        ),
    )
    console = make_console(stderr=as_json)
    try:
        with console.status(f"distilling {teacher} into {student}"):
            result = run(options)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    report = result.report
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    show(console, report_table(report))
    for note in report.candidates[-1].notes:
        say(console, note)
    say(console, report.headline(), style="bold")
    if result.version_dir is not None:
        say(console, f"wrote version {report.version} of {teacher}: {result.version_dir}")
    for path in result.report_paths:
        say(console, f"report: {path}")
