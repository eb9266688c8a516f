"""``forwardpass export``: a model as a bundle that runs without the server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

__all__ = ["export"]


def _repository(flag: Path | None) -> Path:
    """Where the model is read from: --model-repository, else the configured repository
    (reading from the embedded one is fine: an export never writes into the repository)."""
    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError

    if flag is not None:
        return flag
    try:
        return ServerConfig.from_env().model_repository
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None


def _outside_package(output: Path) -> None:
    from forwardpass.cli.options import writable_repository

    # The same rule the commands that write models follow: nothing inside the package.
    writable_repository(output)


@click.command()
@click.argument("model")
@click.option("--edge", is_flag=True, required=True, help="Write an edge bundle (ORT format).")
@click.option(
    "--target",
    type=click.Choice(("x86_64", "arm64")),
    default=None,
    help="The CPU it will run on: Fixed optimizations for it (default: any CPU, Runtime "
    "optimizations replayed where it runs).",
)
@click.option("--version", type=int, default=None, help="Model version (default: latest).")
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository holding MODEL (default: $FORWARDPASS_MODEL_REPOSITORY, else the "
    "embedded one); only read.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bundle folder (default: ./MODEL-VERSION-TARGET-edge); a .tar.gz is written beside.",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle folder (atomically).")
@click.option(
    "--raw",
    is_flag=True,
    help="Leave out processing the runner lacks: it takes and returns the model's tensors.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Rounds over the samples for the latency figures.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export(
    model: str,
    edge: bool,
    target: str | None,
    version: int | None,
    model_repository: Path | None,
    output: Path | None,
    force: bool,
    raw: bool,
    repeat: int,
    as_json: bool,
) -> None:
    """Write MODEL as an edge bundle: ORT model, runner.py, processing, labels, manifest.

    The bundle's answers are checked against the engine's on sample inputs before anything
    is written.
    """
    from forwardpass.cli.console import console as make_console
    from forwardpass.cli.console import say
    from forwardpass.errors import ForwardpassError
    from forwardpass.export import ANY, TARGETS, ExportOptions, export_bundle

    repository = _repository(model_repository)
    chosen = TARGETS[target] if target else ANY
    if output is not None:
        _outside_package(output)
    else:
        _outside_package(Path(os.getcwd()))
    options = ExportOptions(
        model=model,
        repository=repository,
        version=version,
        target=chosen,
        output=output,
        force=force,
        raw=raw,
        repeat=repeat,
    )
    console = make_console(stderr=as_json)
    try:
        with console.status(f"exporting {model} for {chosen.name}"):
            result = export_bundle(options)
    except ForwardpassError as exc:
        raise click.ClickException(exc.message) from None
    manifest = result.manifest
    if as_json:
        click.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    m = manifest.measured_on_build_machine
    size = sum(manifest.files.values())
    say(console, f"wrote {result.folder} ({size / 1024:.1f} KiB) and {result.archive}")
    say(
        console,
        f"checked equal to the engine on {len(manifest.verification['samples'])} sample(s); "
        f"cold start {m.cold_start_s * 1000:.0f} ms, peak RSS {m.peak_rss_mib:.0f} MiB, "
        f"p50 {m.latency_p50_ms} ms, p99 {m.latency_p99_ms} ms (on this machine)",
    )
    lacking = manifest.target_check["lacking_on_target"]
    foreign = manifest.target_check["outside_standard_domains"]
    if lacking:
        say(console, f"the {chosen.name} runtime lacks: {json.dumps(lacking)}", style="bold")
    if foreign:
        say(console, f"operators outside the standard domains: {json.dumps(foreign)}")
    if manifest.processing["not_implemented"]:
        say(
            console,
            "not in the runner (raw bundle): " + "; ".join(manifest.processing["not_implemented"]),
        )
    say(console, f"run it: python {result.folder / 'runner.py'} INPUT...")
