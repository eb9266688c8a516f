"""``forwardpass monitor``: the drift monitor's offline side (reference profiles)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from forwardpass.cli.options import require_model, writable_repository

__all__ = ["monitor"]


@click.group()
def monitor() -> None:
    """Production monitoring: reference profiles for drift detection."""


@monitor.command()
@click.argument("model")
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="What the model was trained on (or saw when it was good): an .npz keyed by input "
    "name, an .npy, a .txt of sentences, or a folder of them / images; files go through "
    "the model's processing, as for `optimize --validation`.",
)
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository holding MODEL (default: $FORWARDPASS_MODEL_REPOSITORY, else "
    "./model_repository).",
)
@click.option(
    "--version", type=click.IntRange(min=1), default=None, help="Version to run (latest)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the stored metadata as JSON.")
def reference(
    model: str, data: Path, model_repository: Path | None, version: int | None, as_json: bool
) -> None:
    """Store MODEL's reference profile (monitor/reference.npz + .json in its folder).

    Per input feature, per output and the embedding (where there is one): the values that
    the server's drift monitor compares live traffic with.
    """
    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import say
    from forwardpass.errors import ForwardpassError
    from forwardpass.monitor.reference import build_reference

    repository = writable_repository(model_repository)
    require_model(repository, model)
    if not (repository / model).is_dir():
        raise click.ClickException(f"model {model!r} is not in {repository}")
    try:
        meta = build_reference(repository, model, data, version)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    console = make_console()
    embedding = meta["embedding"]
    say(
        console,
        f"reference profile of {model} (version {meta['version']}): {meta['rows']} rows, "
        f"{len(meta['features'])} features"
        + (f", embedding {embedding['source']} ({embedding['width']} wide)" if embedding else ""),
    )
    say(console, f"wrote {meta['folder']}")
