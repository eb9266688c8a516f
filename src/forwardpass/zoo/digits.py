"""``digits``: the 8×8 handwritten-digit classifier embedded in the package, copied out.

It is served by default (``forwardpass serve`` without a repository); the recipe copies its
folder (config, labels, ``TRAINING.json``, sample PNGs, ``1/model.onnx``) so it can sit in a
repository beside the other zoo models. Retrain it with ``scripts/train_digits.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from forwardpass.config import DEFAULT_REPOSITORY
from forwardpass.zoo.registry import PROVENANCE_FILE, Built, Recipe, provenance

__all__ = ["RECIPE", "SOURCE"]

#: The embedded model's folder.
SOURCE = DEFAULT_REPOSITORY / "digits"


def build(repository: Path, name: str) -> Built:
    """Copy the embedded folder to ``repository/name``."""
    target = repository / name
    shutil.copytree(SOURCE, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    (target / PROVENANCE_FILE).write_bytes(provenance(RECIPE, copied_from=str(SOURCE)))
    return Built(("copied from the package; see TRAINING.json for its held-out accuracy",))


RECIPE = Recipe(
    name="digits",
    task="image classification, 8x8 digits",
    summary="small CNN trained on load_digits, embedded in forwardpass and served by default",
    source="embedded in the forwardpass package (src/forwardpass/models/digits)",
    license="Apache-2.0 (forwardpass); data BSD-3-Clause (scikit-learn)",
    modules=(),
    pip="pip install forwardpass",
    build=build,
)
