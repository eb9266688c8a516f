"""Fixtures for the zoo tests: each recipe is built once per session, only when asked for.

A recipe whose packages are missing skips the tests that need it (CI installs them with the
``test`` extra). Each recipe gets its own repository so an engine loads only that model.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from zoo_helpers import Built

from forwardpass.zoo import add, get_recipe, missing_modules


@pytest.fixture(scope="session")
def zoo_build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """``zoo_build(name)`` → (repository holding only ``name``, what :func:`add` reported)."""
    cache: dict[str, Built] = {}

    def build(name: str) -> Built:
        if name not in cache:
            # Found, not imported: facenet-pytorch's package cannot be imported without
            # torchvision, though the build reads only its weight files.
            missing = missing_modules(get_recipe(name))
            if missing:
                pytest.skip(f"zoo model {name} needs {', '.join(missing)}")
            repository = tmp_path_factory.mktemp(f"zoo-{name}")
            cache[name] = (repository, add(name, repository))
        return cache[name]

    return build
