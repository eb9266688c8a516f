"""Fixtures for the engine, HTTP app and CLI tests: a model repository built in ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from model_builders import build_repository, run_with_engine


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh repository (see :func:`build_repository`)."""
    return build_repository(tmp_path / "models")


@pytest.fixture
def with_engine() -> Callable[..., Any]:
    """``with_engine(root, async_fn)``: see :func:`run_with_engine`."""
    return run_with_engine
