"""Named columns → one feature vector, with the scaling stored beside the model.

Each column is its own client input (FP32, dims [1]), so an Open Inference Protocol request
names its values; a missing column is the engine's usual "needs input(s)" 400. Options:
``to`` (the model input [F]), ``columns`` (names in feature order; default the model's
``feature_names`` parameter), and either ``scaler`` (a JSON file in the model folder with
``mean`` and ``scale`` lists) or inline ``mean`` / ``scale``: x' = (x - mean) / scale.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.base import InputProcessor

__all__ = ["TabularInput"]


class TabularInput(InputProcessor):
    """FP32 columns (each [N,1]) → model input [N, F], standardised when a scaler is given."""

    def __init__(self, config: ModelConfig, model_dir: Path, options: Mapping[str, Any]) -> None:
        opts = dict(options)
        target = config.input(str(opts.pop("to", "")))
        if target is None:
            raise InvalidModelConfig("tabular input: 'to' must name a model input")
        columns = opts.pop("columns", None)
        if columns is None:
            names = config.parameters.get("feature_names", "")
            columns = [c for c in names.split(",") if c]
        if not columns or len(set(columns)) != len(columns):
            raise InvalidModelConfig(
                "tabular input: columns must be a non-empty list of distinct names"
            )
        width = target.dims[-1] if target.dims else -1
        if width not in (-1, len(columns)):
            raise InvalidModelConfig(
                f"tabular input: {len(columns)} columns but model input {target.name!r} "
                f"takes {width}"
            )
        mean, scale = opts.pop("mean", None), opts.pop("scale", None)
        if "scaler" in opts:
            path = model_dir / str(opts.pop("scaler"))
            if not path.resolve().is_relative_to(model_dir.resolve()) or not path.is_file():
                raise InvalidModelConfig(f"tabular input: scaler file {path.name} is missing")
            try:
                stored = json.loads(path.read_text())
                mean, scale = stored["mean"], stored["scale"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidModelConfig(
                    f"tabular input: bad scaler file {path.name}: {exc}"
                ) from None
        if opts:
            raise InvalidModelConfig(f"tabular input: unknown option(s) {sorted(opts)}")
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        for value, what in ((self.mean, "mean"), (self.scale, "scale")):
            if value is not None and value.shape != (len(columns),):
                raise InvalidModelConfig(f"tabular input: {what} needs {len(columns)} values")
        if self.scale is not None and np.any(self.scale == 0):
            raise InvalidModelConfig("tabular input: scale must not contain 0")
        self.target = target
        self.columns = tuple(str(c) for c in columns)
        self.inputs = tuple(
            TensorSpec(name=c, datatype=DataType.FP32, dims=(1,)) for c in self.columns
        )
        self.targets = (target.name,)

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        matrix = np.concatenate(
            [arrays[c].reshape(-1, 1).astype(np.float32) for c in self.columns], axis=1
        )
        if not np.all(np.isfinite(matrix)):
            bad = [self.columns[j] for j in np.where(~np.isfinite(matrix).all(axis=0))[0]]
            raise InvalidArgument(f"columns {bad} hold NaN or infinite values")
        if self.mean is not None:
            matrix -= self.mean
        if self.scale is not None:
            matrix /= self.scale
        return {self.target.name: matrix.astype(self.target.datatype.numpy)}
