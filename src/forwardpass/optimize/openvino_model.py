"""Writing a promoted OpenVINO candidate: a model of its own beside the original.

Every version of a model shares one config, and an OpenVINO IR version needs
``backend: "openvino"`` and ``default_model_filename: "model.xml"``, which the original's ONNX
versions cannot run under. So the candidate becomes the next version of ``<model>_openvino``
in the same repository: its config is the original's, with the backend, the file name and the
parameters the candidate was measured with (threads, one stream, the latency hint, its precision
hint). The original model is left as it was; a client switches by model name.

The config is written before the version, so the repository never sees the IR folder under
an onnxruntime config; a folder this run created is removed again if the version cannot be
written. An existing ``<model>_openvino`` whose backend is not openvino is refused.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from forwardpass.errors import InvalidArgument
from forwardpass.model_config import ModelConfig
from forwardpass.optimize.candidates import CandidateResult
from forwardpass.optimize.version import next_version, write_version

__all__ = ["SUFFIX", "openvino_config", "write_openvino_model"]

SUFFIX = "_openvino"


def openvino_config(config: ModelConfig, precision: str) -> ModelConfig:
    """``config`` as an OpenVINO model named ``<name>_openvino`` (see the module docstring)."""
    params = dict(config.parameters)
    threads = params.get("intra_op_thread_count") or params.get("INFERENCE_NUM_THREADS")
    params.update({"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"})
    params["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        params["INFERENCE_NUM_THREADS"] = threads
    return dataclasses.replace(
        config,
        name=config.name + SUFFIX,
        backend="openvino",
        platform="",
        default_model_filename="model.xml",
        parameters=params,
    )


def write_openvino_model(
    model_dir: Path,
    config: ModelConfig,
    chosen: CandidateResult,
    report: Any,
    render: Callable[[Any], Mapping[str, bytes]],
) -> Path:
    """Write ``chosen`` (an IR ``.xml`` with its ``.bin``) as the next version of
    ``<model>_openvino``; the version folder. ``report.version`` is set to its number."""
    from forwardpass.repository import ModelRepository
    from forwardpass.repository.pbtxt_writer import config_to_pbtxt

    assert chosen.path is not None
    precision = chosen.providers[0].split(":")[-1] if chosen.providers else "f32"
    target = openvino_config(config, precision)
    folder = model_dir.parent / target.name
    created = not folder.exists()
    if not created:
        existing = ModelRepository(model_dir.parent).read(target.name).config
        if existing.backend != "openvino":
            raise InvalidArgument(
                f"{folder} exists with backend {existing.backend!r}; the OpenVINO candidate "
                "needs a model of its own with backend openvino (move that model away)"
            )
    try:
        if created:
            folder.mkdir()
            for spec in config.outputs:
                if spec.label_filename and (model_dir / spec.label_filename).is_file():
                    shutil.copy2(model_dir / spec.label_filename, folder / spec.label_filename)
            handle, staged = tempfile.mkstemp(prefix=".config-", dir=folder)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(config_to_pbtxt(target))
            os.replace(staged, folder / "config.pbtxt")
        report.version = version = next_version(folder)
        files = dict(render(report))
        files["model.bin"] = chosen.path.with_suffix(".bin").read_bytes()
        return write_version(folder, version, chosen.path, files, model_filename="model.xml")
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
