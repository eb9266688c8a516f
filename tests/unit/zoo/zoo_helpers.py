"""Helpers for the zoo tests: test photographs, and the HTTP app in-process."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from model_builders import run_with_engine

from forwardpass.zoo import Added

#: What the ``zoo_build`` fixture gives: the repository holding the model, and the report.
Built = tuple[Path, Added]


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """``pixels`` (H, W, 3 uint8) encoded as a JPEG file."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def photo(name: str) -> bytes:
    """A real photograph shipped with scikit-image (``chelsea``, ``coffee`` ...) as a JPEG."""
    data = pytest.importorskip("skimage.data", reason="the test photos come from scikit-image")
    return jpeg(getattr(data, name)())


Call = Callable[..., Awaitable[Any]]


def with_http_app(root: Path, body: Callable[[Call], Awaitable[None]]) -> None:
    """Run ``body(call)`` against the HTTP app in-process; ``call(method, path, json)``."""
    from forwardpass.monitor.metrics import metrics_renderer
    from forwardpass.protocol.http import HttpApp, HttpRequest

    async def main(engine: Any) -> None:
        app = HttpApp(engine, metrics_renderer(engine))

        async def call(method: str, path: str, document: Any = None) -> Any:
            raw = b"" if document is None else orjson.dumps(document)
            return await app.handle(HttpRequest(method, path, raw, {}))

        await body(call)

    run_with_engine(root, main)
