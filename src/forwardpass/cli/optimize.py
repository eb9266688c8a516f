"""``forwardpass optimize``: a faster (or smaller) version of a model, with the proof beside it."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["optimize"]

_TARGETS = ("cpu", "cuda", "tensorrt", "openvino", "edge")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter("batch sizes must be positive integers")
    return values


@click.command()
@click.argument("model")
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository holding MODEL (default: as `serve`).",
)
@click.option("--version", type=int, default=None, help="Version to optimize (default: latest).")
@click.option(
    "--target",
    type=click.Choice(_TARGETS),
    default="cpu",
    show_default=True,
    help="Where the model will run; edge prefers the smallest file within budget.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=0.01,
    show_default=True,
    help="Largest drop of the primary metric a promoted candidate may show "
    "(top-1 points, 1 − agreement, 1 − cosine, or relative MAE increase).",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Inputs for static quantization: .npz, .npy, or a folder of them / images.",
)
@click.option(
    "--validation",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Inputs to judge accuracy on (without it: random inputs, latency only).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Labels of the validation samples (.npy class ids / values).",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated: graph,fp16,bf16,int8-dynamic,int8-static,int4,prune "
    "(default: all but prune, which trains and needs torch).",
)
@click.option(
    "--task",
    type=click.Choice(("classification", "regression", "embedding")),
    default=None,
    help="What the first output is (default: guessed from it).",
)
@click.option("--threads", type=int, default=1, show_default=True, help="Intra-op threads.")
@click.option(
    "--iterations",
    type=int,
    default=200,
    show_default=True,
    help="Timed runs per batch size (capped at --seconds each).",
)
@click.option(
    "--seconds",
    type=float,
    default=3.0,
    show_default=True,
    help="Time cap per candidate and batch size.",
)
@click.option(
    "--batch-sizes",
    default="1,8,32",
    show_default=True,
    help="Batch sizes to time (batch 1 always).",
)
@click.option(
    "--min-gain",
    type=float,
    default=0.05,
    show_default=True,
    help="Promote only a candidate this much faster (edge: smaller) than the original.",
)
@click.option(
    "--no-isolate",
    is_flag=True,
    help="Measure in this process (faster; memory figures are rougher).",
)
@click.option("--dry-run", is_flag=True, help="Measure and report, write no version.")
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save the report here when no version is written.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def optimize(
    model: str,
    model_repository: Path | None,
    version: int | None,
    target: str,
    max_accuracy_drop: float,
    calibration: Path | None,
    validation: Path | None,
    labels: Path | None,
    methods: str | None,
    task: str | None,
    threads: int,
    iterations: int,
    seconds: float,
    batch_sizes: str,
    min_gain: float,
    no_isolate: bool,
    dry_run: bool,
    report_dir: Path | None,
    as_json: bool,
) -> None:
    """Try graph optimization, FP16, INT8 and INT4 on MODEL; keep the fastest within budget.

    The chosen candidate becomes a new version with optimization.json/.html beside it; a
    candidate over --max-accuracy-drop is never promoted, and no existing version is touched.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError
    from forwardpass.optimize import MeasureSettings, OptimizeOptions, Target
    from forwardpass.optimize import optimize as run
    from forwardpass.optimize.report import report_table

    if threads < 1 or iterations < 1 or seconds <= 0 or max_accuracy_drop < 0:
        raise click.BadParameter(
            "--threads, --iterations, --seconds must be positive and "
            "--max-accuracy-drop not negative"
        )
    repository = ServerConfig.from_env(model_repository=model_repository).model_repository
    options = OptimizeOptions(
        model=model,
        repository=Path(repository),
        version=version,
        target=Target(target),
        max_accuracy_drop=max_accuracy_drop,
        calibration=calibration,
        validation=validation,
        labels=labels,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None,
        dry_run=dry_run,
        task=task,  # type: ignore[arg-type]  # click.Choice guarantees a Task literal
        measure=MeasureSettings(
            threads=threads,
            iterations=iterations,
            max_seconds=seconds,
            batch_sizes=_ints(batch_sizes),
            isolate=not no_isolate,
        ),
        min_gain=min_gain,
        report_dir=report_dir,
    )
    console = Console(stderr=as_json)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            bar = progress.add_task(f"optimizing {model}", total=None)

            def update(done: int, total: int, what: str) -> None:
                progress.update(bar, completed=done, total=total, description=what)

            result = run(options, progress=update)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    report = result.report
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(report_table(report))
    if report.data.get("note"):
        console.print(f"[yellow]{report.data['note']}[/yellow]")
    console.print(f"[bold]{report.selection.reason}[/bold]")
    if result.version_dir is not None:
        console.print(f"wrote version {report.version} of {model}: {result.version_dir}")
    elif dry_run and report.selection.promoted:
        console.print("dry run: no version written")
    for path in result.report_paths:
        console.print(f"report: {path}")
