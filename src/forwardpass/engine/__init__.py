"""The engine: the table of loaded models (``models``), request validation (``validation``),
the inference step (``core``) and response building (``outputs``)."""

from __future__ import annotations

from forwardpass.engine.core import Engine
from forwardpass.engine.models import LoadedVersion, ModelHandle, ModelTable
from forwardpass.results import ModelState

__all__ = ["Engine", "LoadedVersion", "ModelHandle", "ModelState", "ModelTable"]
