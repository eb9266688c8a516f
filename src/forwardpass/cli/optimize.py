"""``forwardpass optimize``: a faster (or smaller) version of a model, with the proof beside it."""

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


_OPTIONS = "forwardpass.optimize.optimizer:OptimizeOptions"
_MEASURE = "forwardpass.optimize.measure:MeasureSettings"


@click.command()
@click.argument("model")
@run_options(_OPTIONS, "MODEL")
@click.option(
    "--target",
    type=click.Choice(_TARGETS),
    cls=DataclassOption,
    default_from=f"{_OPTIONS}.target",
    help="Where the model will run; edge prefers the smallest file within budget.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Inputs for static quantization: .npz, .npy, or a folder of them / images.",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated: graph,fp16,bf16,int8-dynamic,int8-static,int4,prune,distill "
    "(default: all but prune and distill, which train and need torch).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Training steps for the methods that train (distill; default: the method's).",
)
@click.option(
    "--task",
    type=click.Choice(("classification", "regression", "embedding")),
    default=None,
    help="What the first output is (default: guessed from it).",
)
@click.option(
    "--threads",
    cls=DataclassOption,
    default_from=f"{_MEASURE}.threads",
    type=click.IntRange(min=1),
    help="Intra-op threads.",
)
@click.option(
    "--batch-sizes",
    cls=DataclassOption,
    default_from=f"{_MEASURE}.batch_sizes",
    help="Batch sizes to time (batch 1 always).",
)
@click.option(
    "--min-gain",
    cls=DataclassOption,
    default_from=f"{_OPTIONS}.min_gain",
    type=click.FloatRange(min=0),
    help="Promote only a candidate this much faster (edge: smaller) than the original, "
    "and by more than the measured noise.",
)
def optimize(
    model: str,
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
    target: str | None,
    calibration: Path | None,
    methods: str | None,
    task: str | None,
    threads: int | None,
    batch_sizes: str | None,
    min_gain: float | None,
    steps: int | None,
) -> None:
    """Try graph optimization, FP16, INT8 and INT4 on MODEL; keep the fastest within budget.

    The chosen candidate becomes a new version with optimization.json/.html beside it; a
    candidate over --max-accuracy-drop is never promoted, and no existing version is touched.
    """
    from dataclasses import replace

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import say, show
    from forwardpass.errors import ForwardpassError
    from forwardpass.optimize import MeasureSettings, OptimizeOptions, Target
    from forwardpass.optimize import optimize as run
    from forwardpass.optimize.report import report_table

    repository = writable_repository(model_repository)
    require_model(repository, model)
    measure = replace(
        MeasureSettings(),
        isolate=not no_isolate,
        **given(
            threads=threads,
            iterations=iterations,
            max_seconds=seconds,
            rounds=rounds,
            batch_sizes=_ints(batch_sizes) if batch_sizes is not None else None,
        ),
    )
    options = OptimizeOptions(
        model=model,
        repository=repository,
        measure=measure,
        dry_run=dry_run,
        **given(
            version=version,
            target=Target(target) if target else None,
            max_accuracy_drop=max_accuracy_drop,
            calibration=calibration,
            validation=validation,
            labels=labels,
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None,
            task=task,
            min_gain=min_gain,
            report_dir=report_dir,
            steps=steps,
        ),
    )
    console = make_console(stderr=as_json)
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
    show(console, report_table(report))
    for line in report.notes():
        say(console, line)
    say(console, report.headline(), style="bold")
    if result.version_dir is not None:
        written_as = result.version_dir.parent.name
        say(console, f"wrote version {report.version} of {written_as}: {result.version_dir}")
    elif dry_run and report.selection.promoted:
        say(console, "dry run: no version written")
    for path in result.report_paths:
        say(console, f"report: {path}")
