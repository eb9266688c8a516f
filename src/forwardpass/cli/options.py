"""Options several commands share, and where the commands that write a model may write.

- :func:`writable_repository`: the one rule for ``zoo add``, ``import``, ``optimize`` and
  ``distill``: ``--model-repository``, else ``$FORWARDPASS_MODEL_REPOSITORY`` unless it names
  the repository embedded in the package, else ``./model_repository``; and never a folder inside
  the installed package (the next ``forwardpass serve`` would silently serve what was written).
- :class:`DataclassOption`: a flag whose default is "unset" (``None``), so the dataclass fills
  it in, while ``--help`` still shows the dataclass's default (read lazily: the help of one
  command must not import the optimizer).
- :func:`run_options`: the options ``optimize`` and ``distill`` both take.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "DEFAULT_REPOSITORY",
    "DataclassOption",
    "dataclass_default",
    "given",
    "run_options",
    "writable_repository",
]

#: Where commands that write a model go without --model-repository or
#: $FORWARDPASS_MODEL_REPOSITORY (relative to the working directory).
DEFAULT_REPOSITORY = Path("model_repository")

F = TypeVar("F", bound=Callable[..., Any])


def _package_dir() -> Path:
    import forwardpass

    return Path(forwardpass.__file__).resolve().parent


def writable_repository(flag: Path | None) -> Path:
    """The repository a command writes new models or versions into (see the module docstring).

    Raises :class:`click.ClickException` for a folder inside the installed package.
    """
    from forwardpass.config import DEFAULT_REPOSITORY as EMBEDDED
    from forwardpass.config import ServerConfig
    from forwardpass.errors import ForwardpassError

    if flag is None:
        try:
            configured = ServerConfig.from_env().model_repository
        except ForwardpassError as exc:
            raise click.ClickException(exc.message) from None
        repository = DEFAULT_REPOSITORY if configured == EMBEDDED else configured
    else:
        repository = flag
    package = _package_dir()
    resolved = repository.resolve()
    if resolved == package or package in resolved.parents:
        raise click.ClickException(
            f"{repository} is inside the installed forwardpass package, which is read-only "
            "to forwardpass's commands (what is written there would be served by every "
            "`forwardpass serve` without a repository). Copy the model out first, e.g. "
            "`forwardpass zoo add digits --model-repository DIR`, and pass --model-repository DIR."
        )
    return repository


def require_model(repository: Path, model: str) -> None:
    """A clear error when ``model`` is not in ``repository`` but is in the embedded one."""
    from forwardpass.config import DEFAULT_REPOSITORY as EMBEDDED

    if not (repository / model).exists() and (EMBEDDED / model).is_dir():
        raise click.ClickException(
            f"model {model!r} is not in {repository}; the {model} model embedded in the "
            "package is never changed in place. Copy it out first: "
            f"`forwardpass zoo add {model} --model-repository {repository}`"
        )


def dataclass_default(source: str) -> Any:
    """The default of ``module:Class.field[.field...]`` (a nested dataclass's fields too)."""
    module, _, path = source.partition(":")
    owner, *names = path.split(".")
    value: Any = getattr(importlib.import_module(module), owner)
    for name in names:
        if isinstance(value, type):
            spec = next(f for f in dataclasses.fields(value) if f.name == name)
            if spec.default is not dataclasses.MISSING:
                value = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                value = spec.default_factory()
            else:
                raise LookupError(f"{source}: {name} has no default")
        else:
            value = getattr(value, name)
    return value


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if hasattr(value, "value"):  # an Enum
        return str(value.value)
    return str(value)


class DataclassOption(click.Option):
    """An option that defaults to ``None`` and shows ``default_from``'s default in --help."""

    def __init__(self, *args: Any, default_from: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", None)
        super().__init__(*args, **kwargs)
        self.default_from = default_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        names, text = record
        return names, f"{text}  [default: {_show(dataclass_default(self.default_from))}]"


def given(**values: Any) -> dict[str, Any]:
    """The values the user set (flags left unset are ``None`` and fall to the dataclass)."""
    return {k: v for k, v in values.items() if v is not None}


def run_options(options_class: str, model_help: str) -> Callable[[F], F]:
    """The options ``optimize`` and ``distill`` share; ``options_class`` is ``module:Class``."""
    measure = "forwardpass.optimize.measure:MeasureSettings"
    shared = [
        click.option(
            "--model-repository",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help=f"Repository holding {model_help}, where the new version is written "
            "(default: $FORWARDPASS_MODEL_REPOSITORY, else ./model_repository; never the "
            "package's embedded one).",
        ),
        click.option(
            "--version", type=int, default=None, help=f"{model_help} version (default: latest)."
        ),
        click.option(
            "--validation",
            type=click.Path(exists=True, path_type=Path),
            default=None,
            help="Inputs to judge accuracy on: .npz, .npy, a folder of them / images, or a "
            ".txt of sentences (one per line) for a text model.",
        ),
        click.option(
            "--labels",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Labels of the --validation samples (.npy or one per line).",
        ),
        click.option(
            "--max-accuracy-drop",
            cls=DataclassOption,
            default_from=f"{options_class}.max_accuracy_drop",
            type=click.FloatRange(min=0),
            help="Largest drop of the primary metric a written version may show "
            "(top-1 points, 1 − agreement, 1 − cosine, or relative MAE increase).",
        ),
        click.option(
            "--iterations",
            cls=DataclassOption,
            default_from=f"{measure}.iterations",
            type=click.IntRange(min=1),
            help="Timed runs per batch size, over all rounds (capped by --seconds).",
        ),
        click.option(
            "--seconds",
            cls=DataclassOption,
            default_from=f"{measure}.max_seconds",
            type=click.FloatRange(min=0, min_open=True),
            help="Time cap per candidate and batch size, over all rounds.",
        ),
        click.option(
            "--rounds",
            cls=DataclassOption,
            default_from=f"{measure}.rounds",
            type=click.IntRange(min=1),
            help="Interleaved measuring rounds (original, candidate 1, 2, …, original, …); "
            "their spread is the noise a gain must exceed.",
        ),
        click.option("--no-isolate", is_flag=True, help="Measure latency in this process."),
        click.option("--dry-run", is_flag=True, help="Measure and report; write no version."),
        click.option(
            "--report-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Save the report here when no version is written.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    ]

    def decorate(command: F) -> F:
        for option in reversed(shared):
            command = option(command)
        return command

    return decorate
