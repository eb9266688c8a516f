"""``forwardpass distill``: a smaller student trained on a teacher's outputs, as a new version."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["distill"]


@click.command()
@click.argument("teacher")
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository holding TEACHER (default: as `serve`).",
)
@click.option("--version", type=int, default=None, help="Teacher version (default: latest).")
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
    "images (fed through the teacher's declared processing).",
)
@click.option(
    "--validation",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Inputs to judge the student on (default: 10% of --data, held out).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Labels of the --validation samples (.npy or one per line): accuracy vs labels too.",
)
@click.option("--epochs", type=int, default=60, show_default=True, help="Training epochs.")
@click.option(
    "--temperature", type=float, default=3.0, show_default=True, help="Softening temperature T."
)
@click.option("--learning-rate", type=float, default=1e-2, show_default=True, help="Adam's rate.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Training batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of init and order.")
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=0.02,
    show_default=True,
    help="Write the student only when its primary metric drops at most this much.",
)
@click.option("--iterations", type=int, default=200, show_default=True, help="Timed runs.")
@click.option("--seconds", type=float, default=3.0, show_default=True, help="Timing cap.")
@click.option("--no-isolate", is_flag=True, help="Measure latency in this process.")
@click.option("--dry-run", is_flag=True, help="Train, measure and report; write no version.")
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save the report here when no version is written.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def distill(
    teacher: str,
    model_repository: Path | None,
    version: int | None,
    student: str,
    data: Path,
    validation: Path | None,
    labels: Path | None,
    epochs: int,
    temperature: float,
    learning_rate: float,
    batch_size: int,
    seed: int,
    max_accuracy_drop: float,
    iterations: int,
    seconds: float,
    no_isolate: bool,
    dry_run: bool,
    report_dir: Path | None,
    as_json: bool,
) -> None:
    """Train a smaller STUDENT on TEACHER's temperature-softened outputs over unlabelled data.

    Needs torch (pip install 'forwardpass[torch]'). The student is exported to ONNX with the
    teacher's input and output names, checked against torch, measured against the teacher,
    and written as a new version with optimization.json/.html (method: distillation) beside
    it; no existing version is touched.
    """
    from rich.console import Console

    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError
    from forwardpass.optimize.distill import DistillOptions
    from forwardpass.optimize.distill import distill as run
    from forwardpass.optimize.measure import MeasureSettings
    from forwardpass.optimize.report import report_table
    from forwardpass.optimize.training import FitSettings

    if min(epochs, batch_size, iterations) < 1 or min(temperature, learning_rate, seconds) <= 0:
        raise click.BadParameter(
            "--epochs, --batch-size, --iterations, --temperature, --learning-rate and "
            "--seconds must be positive"
        )
    repository = ServerConfig.from_env(model_repository=model_repository).model_repository
    options = DistillOptions(
        teacher=teacher,
        repository=Path(repository),
        student=student,
        data=data,
        validation=validation,
        labels=labels,
        version=version,
        fit=FitSettings(
            epochs=epochs,
            max_steps=10**9,
            batch_size=batch_size,
            learning_rate=learning_rate,
            temperature=temperature,
            seed=seed,
        ),
        max_accuracy_drop=max_accuracy_drop,
        measure=MeasureSettings(iterations=iterations, max_seconds=seconds, isolate=not no_isolate),
        dry_run=dry_run,
        report_dir=report_dir,
    )
    console = Console(stderr=as_json)
    try:
        with console.status(f"distilling {teacher} into {student}"):
            result = run(options)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    report = result.report
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(report_table(report))
    for note in report.candidates[-1].notes:
        console.print(note)
    console.print(f"[bold]{report.selection.reason}[/bold]")
    if result.version_dir is not None:
        console.print(f"wrote version {report.version} of {teacher}: {result.version_dir}")
    for path in result.report_paths:
        console.print(f"report: {path}")
