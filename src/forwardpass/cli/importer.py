"""``forwardpass import``: a trained model becomes a model-repository entry.

The module is not named ``import`` (a keyword); the click command is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["import_"]

FRAMEWORKS = ("onnx", "sklearn", "torch", "huggingface")

#: Options that only one framework reads, so a misplaced one is an error, not ignored.
_FRAMEWORK_OPTIONS = {
    "features": ("--features", "sklearn"),
    "state_dict": ("--state-dict", "torch"),
    "input_shapes": ("--input-shape", "torch"),
    "output_names": ("--output-name", "torch"),
    "task": ("--task", "huggingface"),
    "pooling": ("--pooling", "huggingface"),
    "no_normalize": ("--no-normalize", "huggingface"),
}


def _check_options(framework: str, options: dict[str, Any]) -> None:
    for key, (flag, owner) in _FRAMEWORK_OPTIONS.items():
        if owner != framework and options.get(key) not in (None, False, ()):
            raise click.UsageError(f"{flag} applies to {owner} imports only")


def _run(framework: str, source: str, repository: Path, o: dict[str, Any]) -> Any:
    from forwardpass.importers.onnx_file import read_labels
    from forwardpass.importers.verification import load_samples

    common = {
        "repository": repository,
        "name": o["name"],
        "max_batch_size": o["max_batch_size"],
        "version": o["version"],
    }
    tolerance = {k: o[k] for k in ("atol", "rtol") if o[k] is not None}
    labels = read_labels(o["labels"]) if o["labels"] else None
    if labels is not None and framework in ("sklearn", "huggingface"):
        raise click.UsageError("--labels: this framework's model names its own classes")
    if framework == "sklearn":
        from forwardpass.importers.sklearn import PICKLE_WARNING, import_sklearn, sample_from_file

        click.secho(f"warning: {PICKLE_WARNING}", fg="yellow", err=True)
        if len(o["samples"]) > 1:
            raise click.UsageError("sklearn takes one --sample file (.npy or .csv rows)")
        sample = sample_from_file(Path(o["samples"][0])) if o["samples"] else None
        return import_sklearn(
            Path(source), features=o["features"], sample=sample, **common, **tolerance
        )
    if framework == "onnx":
        from forwardpass.importers.onnx_file import import_onnx
        from forwardpass.runtime.onnx import describe_onnx

        samples = None
        if o["samples"]:
            names = [s.name for s in describe_onnx(Path(source)).inputs]
            samples = load_samples(o["samples"], names)
        return import_onnx(
            Path(source),
            samples=samples,
            labels=labels,
            labels_output=o["labels_output"],
            **common,
            **tolerance,
        )
    if framework == "torch":
        from forwardpass.importers.torch import import_torch, parse_input_shape

        shapes = [parse_input_shape(s) for s in o["input_shapes"]]
        samples = load_samples(o["samples"], [s.name for s in shapes]) if o["samples"] else None
        return import_torch(
            source,
            shapes,
            state_dict=o["state_dict"],
            output_names=o["output_names"],
            samples=samples,
            labels=labels,
            labels_output=o["labels_output"],
            **common,
            **tolerance,
        )
    from forwardpass.importers.huggingface import import_huggingface

    if o["task"] is None:
        raise click.UsageError(
            "huggingface imports need --task (embedding, sequence-classification)"
        )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    samples = load_samples(o["samples"], names) if o["samples"] else None
    return import_huggingface(
        Path(source),
        task=o["task"],
        pooling=o["pooling"],
        normalize=not o["no_normalize"],
        samples=samples,
        **common,
        **tolerance,
    )


def _report(result: Any, repository: Path) -> None:
    from rich.markup import escape

    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import show, table

    console = make_console()
    entry, check = result.entry, result.verification
    console.print(
        f"[bold green]imported[/] {escape(entry.name)} version {entry.version} "
        f"({result.framework}) into {escape(str(repository))}",
        soft_wrap=True,
    )
    grid = table(
        "output",
        "shape",
        "max |diff|",
        f"atol {check.atol:g}",
        title=f"Export vs original on {check.samples} sample row(s)",
    )
    for out in check.outputs:
        diff = f"{out.max_abs_diff:.3g}" + (" mismatched" if out.exact else "")
        grid.add_row(escape(out.name), str(list(out.shape)), diff, "ok" if out.ok else "FAIL")
    show(console, grid)
    for path in entry.written:
        console.print(f"  wrote {escape(str(path))}", soft_wrap=True)
    for path in entry.kept:
        console.print(f"  kept  {escape(str(path))}", soft_wrap=True)
    batching = (
        f"max_batch_size {result.config.max_batch_size}"
        if result.config.max_batch_size
        else "no batching"
    )
    console.print(
        f"  {batching}; inputs: " + ", ".join(escape(i.name) for i in result.config.inputs)
    )
    for note in result.notes:
        console.print(f"  note: {escape(note)}", style="dim")


@click.command("import")
@click.argument("framework", type=click.Choice(FRAMEWORKS))
@click.argument("source")
@click.option("--name", required=True, help="Model name (the folder in the repository).")
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository to write into (default: $FORWARDPASS_MODEL_REPOSITORY, else "
    "./model_repository, created if missing; never inside the installed package).",
)
@click.option(
    "--version",
    type=click.IntRange(min=1),
    default=None,
    help="Version number (default: the next one); an existing version is never overwritten.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=0),
    default=None,
    help="Batch limit (default: 64 when the model batches; 0 never batches).",
)
@click.option(
    "--atol",
    type=float,
    default=None,
    help="Absolute tolerance of verification "
    "(default per framework: 1e-4 fp32; 1e-5 for ONNX batch consistency).",
)
@click.option(
    "--rtol", type=float, default=None, help="Relative tolerance (default per framework)."
)
@click.option(
    "--sample",
    "samples",
    multiple=True,
    metavar="[NAME=]FILE",
    help="Sample inputs for verification: .npy (NAME= for multi-input models), .npz "
    "keyed by input name; sklearn: one .npy or .csv of rows.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="onnx/torch: class names, one per line, written as labels.txt.",
)
@click.option("--labels-output", default=None, help="The output --labels describes.")
@click.option(
    "--features",
    type=click.IntRange(min=1),
    default=None,
    help="sklearn: number of input features (default: the estimator's).",
)
@click.option(
    "--state-dict",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="torch: weights for a module.py:factory source.",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:D0,D1,...[:DTYPE]",
    help="torch: an input and an example shape; the first dimension is the batch.",
)
@click.option(
    "--output-name",
    "output_names",
    multiple=True,
    help="torch: output names, in order (default: output, output_0 ...).",
)
@click.option(
    "--task",
    type=click.Choice(["embedding", "sequence-classification"]),
    default=None,
    help="huggingface: what the exported graph computes.",
)
@click.option(
    "--pooling",
    type=click.Choice(["mean", "cls", "max"]),
    default=None,
    help="huggingface embedding pooling (default: the folder's, else mean).",
)
@click.option("--no-normalize", is_flag=True, help="huggingface embedding: skip L2 normalisation.")
def import_(framework: str, source: str, **options: Any) -> None:
    """Import a trained model into a model repository, checking it against the original.

    FRAMEWORK is onnx, sklearn, torch or huggingface; SOURCE is an .onnx file, a pickled
    estimator (.pkl/.joblib: unpickling runs code, import only trusted files), a TorchScript
    file or module.py:factory, or a local Hugging Face folder. The export runs beside the
    original on sample inputs; beyond tolerance the import fails and writes nothing.
    """
    from forwardpass.cli.options import writable_repository
    from forwardpass.errors import ForwardpassError

    _check_options(framework, options)
    repository = writable_repository(options.pop("model_repository"))
    try:
        result = _run(framework, source, repository, options)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    _report(result, repository)
