"""Registers every command module with the click group."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(group: click.Group) -> None:
    import importlib

    for module_name, command_name in (
        ("forwardpass.cli.serve", "serve"),
        ("forwardpass.cli.predict", "predict"),
        ("forwardpass.cli.models", "models"),
        ("forwardpass.cli.inspect", "inspect"),
        ("forwardpass.cli.bench", "bench"),
        ("forwardpass.cli.importer", "import_"),
        ("forwardpass.cli.zoo", "zoo"),
        ("forwardpass.cli.optimize", "optimize"),
        ("forwardpass.cli.distill", "distill"),
        ("forwardpass.cli.export", "export"),
        ("forwardpass.cli.log", "log"),
        ("forwardpass.cli.monitor", "monitor"),
    ):
        # Command modules keep their heavy imports inside the command body, so importing
        # all of them costs little.
        module = importlib.import_module(module_name)
        group.add_command(getattr(module, command_name))
