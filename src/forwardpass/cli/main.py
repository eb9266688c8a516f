"""``forwardpass`` entry point: a click group; each command lives in its own module."""

from __future__ import annotations

import click

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="forwardpass")
def cli() -> None:
    """forwardpass: fast, monitored neural-network inference."""


def _register() -> None:
    # Commands import their heavy dependencies lazily, inside the command body.
    from forwardpass.cli import commands

    commands.register(cli)


def main() -> None:
    _register()
    cli()
