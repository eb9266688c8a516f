"""Edge bundles: a model in ORT format with a standalone runner (``forwardpass export``)."""

from __future__ import annotations

from forwardpass.export.bundle import ExportOptions, ExportResult, export_bundle
from forwardpass.export.target import ANY, TARGETS, Target

__all__ = ["ANY", "TARGETS", "ExportOptions", "ExportResult", "Target", "export_bundle"]
