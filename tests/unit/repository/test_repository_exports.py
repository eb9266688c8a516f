"""The package's public API is curated: a sorted ``__all__`` that names every export."""

from __future__ import annotations

import types

import forwardpass.repository as repository


def test_all_is_sorted_and_complete() -> None:
    assert repository.__all__ == sorted(repository.__all__)
    public = {
        name
        for name, value in vars(repository).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(repository.__all__)
    for name in repository.__all__:
        assert getattr(repository, name) is not None
