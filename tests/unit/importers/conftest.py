"""Helpers for the importer tests: serve an imported entry in-process and infer once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from model_builders import run_with_engine

from forwardpass.datatypes import DataType
from forwardpass.protocol.documents import index_document
from forwardpass.types import InferRequest, Tensor


def serve_once(
    repository: Path, name: str, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Load ``repository`` with the engine, as ``forwardpass serve`` would, and infer once."""

    async def body(engine: object) -> dict[str, np.ndarray]:
        assert engine.is_ready(name), index_document(engine.index())  # type: ignore[attr-defined]
        request = InferRequest(
            model_name=name,
            inputs=[Tensor(k, DataType.from_numpy(v.dtype), v) for k, v in inputs.items()],
        )
        response = await engine.infer(request)  # type: ignore[attr-defined]
        return {t.name: t.data for t in response.outputs}

    return run_with_engine(repository, body)


@pytest.fixture
def serve() -> Callable[..., dict[str, np.ndarray]]:
    """``serve(repository, name, inputs)``: see :func:`serve_once`."""
    return serve_once
